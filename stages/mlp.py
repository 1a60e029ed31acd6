"""The demo model: a one-hidden-layer MLP for binary classification, in numpy, saved as safetensors.

``p(y=1 | x) = sigmoid(tanh(x W1 + b1) w2 + b2)``, trained on the binary cross-entropy (+ an optional
L2 penalty) with Adam over shuffled mini-batches. Training computes in float64; the weights are
saved as float32 tensors ``hidden.weight`` (in x hidden), ``hidden.bias``, ``output.weight``
(hidden x 1), ``output.bias`` in ``model.safetensors``, beside a ``config.json`` describing the
architecture, the input features and how the model was trained. Everything is deterministic for a
given seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from stages.workspace import InputError

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "Mlp", "TrainConfig", "load_model", "save_model", "train"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARCHITECTURE = "mlp-tanh-sigmoid"
_EPS = 1e-12


@dataclass
class Mlp:
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def initial(cls, inputs: int, hidden: int, rng: np.random.Generator) -> Mlp:
        """Xavier-uniform weights, zero biases."""
        limit1 = np.sqrt(6.0 / (inputs + hidden))
        limit2 = np.sqrt(6.0 / (hidden + 1))
        return cls(
            w1=rng.uniform(-limit1, limit1, size=(inputs, hidden)),
            b1=np.zeros(hidden),
            w2=rng.uniform(-limit2, limit2, size=(hidden, 1)),
            b2=np.zeros(1),
        )

    @property
    def shape(self) -> tuple[int, int]:
        inputs, hidden = self.w1.shape
        return int(inputs), int(hidden)

    def parameters(self) -> list[np.ndarray]:
        return [self.w1, self.b1, self.w2, self.b2]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        hidden = np.tanh(x @ self.w1 + self.b1)
        return _sigmoid((hidden @ self.w2 + self.b2)[:, 0])

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, list[np.ndarray]]:
        n = len(x)
        hidden = np.tanh(x @ self.w1 + self.b1)
        p = _sigmoid((hidden @ self.w2 + self.b2)[:, 0])
        loss = _bce(p, y) + 0.5 * l2 * float((self.w1**2).sum() + (self.w2**2).sum())
        d_logit = ((p - y) / n)[:, None]
        d_w2 = hidden.T @ d_logit + l2 * self.w2
        d_b2 = d_logit.sum(axis=0)
        d_hidden = (d_logit @ self.w2.T) * (1.0 - hidden**2)
        d_w1 = x.T @ d_hidden + l2 * self.w1
        d_b1 = d_hidden.sum(axis=0)
        return loss, [d_w1, d_b1, d_w2, d_b2]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Log loss, accuracy and the share of positives predicted, on ``(x, y)``."""
        p = self.probabilities(x)
        predicted = p >= 0.5
        return {
            "loss": _bce(p, y),
            "accuracy": float((predicted == (y == 1)).mean()),
            "positive_rate": float(predicted.mean()),
        }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # stable for large |z|


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).mean())


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    learning_rate: float
    batch_size: int
    l2: float = 0.0
    seed: int = 0


@dataclass
class TrainResult:
    initial_loss: float
    epoch_loss: list[float] = field(default_factory=list)
    """Loss on the whole training set after each epoch."""


def train(
    model: Mlp, x: np.ndarray, y: np.ndarray, config: TrainConfig, progress: Callable[[int, float], None]
) -> TrainResult:
    """Adam over shuffled mini-batches, in place; ``progress(epoch, loss)`` after each epoch."""
    rng = np.random.default_rng(config.seed)
    y = y.astype(np.float64)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    params = model.parameters()
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    result = TrainResult(initial_loss=model.loss_and_gradients(x, y, config.l2)[0])
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(x))
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            _, grads = model.loss_and_gradients(x[batch], y[batch], config.l2)
            step += 1
            for p, g, m_i, v_i in zip(params, grads, m, v, strict=True):
                m_i *= beta1
                m_i += (1 - beta1) * g
                v_i *= beta2
                v_i += (1 - beta2) * g * g
                m_hat = m_i / (1 - beta1**step)
                v_hat = v_i / (1 - beta2**step)
                p -= config.learning_rate * m_hat / (np.sqrt(v_hat) + eps)
        loss = model.loss_and_gradients(x, y, config.l2)[0]
        result.epoch_loss.append(loss)
        progress(epoch, loss)
    return result


def save_model(directory: Path, model: Mlp, config: dict[str, Any]) -> None:
    """``model.safetensors`` (float32) and ``config.json`` (architecture + ``config``) into ``directory``."""
    inputs, hidden = model.shape
    tensors = {
        "hidden.weight": np.ascontiguousarray(model.w1, dtype=np.float32),
        "hidden.bias": np.ascontiguousarray(model.b1, dtype=np.float32),
        "output.weight": np.ascontiguousarray(model.w2, dtype=np.float32),
        "output.bias": np.ascontiguousarray(model.b2, dtype=np.float32),
    }
    # One metadata key only: safetensors keeps metadata in a hash map whose order changes from process to
    # process, so two keys would give the same weights different bytes (and digests). The rest is in config.json.
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "np"})
    full = {
        "architecture": ARCHITECTURE,
        "task": "binary_classification",
        "input_size": inputs,
        "hidden_units": hidden,
        "activation": "tanh",
        "output_activation": "sigmoid",
        "dtype": "float32",
        "framework": "numpy",
        **config,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_model(directory: Path, where: str) -> tuple[Mlp, dict[str, Any]]:
    """The model and its config from a directory :func:`save_model` wrote; :class:`InputError` if not one."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}/{CONFIG_FILE}: not readable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("architecture") != ARCHITECTURE:
        raise InputError(f"{where}/{CONFIG_FILE}: not a {ARCHITECTURE} model config")
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{where}/{WEIGHTS_FILE}: not a readable safetensors file ({exc})") from exc
    inputs, hidden = config.get("input_size"), config.get("hidden_units")
    expected = {
        "hidden.weight": (inputs, hidden),
        "hidden.bias": (hidden,),
        "output.weight": (hidden, 1),
        "output.bias": (1,),
    }
    for name, shape in expected.items():
        if name not in tensors or tuple(tensors[name].shape) != shape:
            raise InputError(f"{where}/{WEIGHTS_FILE}: tensor {name!r} missing or not of shape {shape}")
    model = Mlp(*(tensors[name].astype(np.float64) for name in expected))
    return model, config
