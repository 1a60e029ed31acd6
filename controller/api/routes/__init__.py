"""One router per resource; each module exposes ``router`` (an ``APIRouter`` without prefix).

``controller.main.API_ROUTERS`` lists which of them are served under ``/api/v1``.
"""
