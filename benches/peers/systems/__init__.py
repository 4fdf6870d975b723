"""One adapter per task queue, each run by ``benches/peers/run.py`` in that system's venv.

``python -m systems.<name> '<json>'`` runs one workload and prints one JSON line;
``python -m systems.<name> worker '<json>'`` is the worker process the workloads start.
The timing, worker handling and output live in ``_common.py`` (standard library only).
"""
