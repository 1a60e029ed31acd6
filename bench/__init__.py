"""Benchmarks (figures in the README); ``python -m bench`` runs every ``bench_*.py`` ``main()``."""
