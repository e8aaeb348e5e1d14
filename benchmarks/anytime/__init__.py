"""Anytime-quality studies: one AMUSE run evaluated at ``x`` at every budget, against baselines
tuned to each budget, on three tasks (``vision``, ``lm``, ``vit``).

- :mod:`.methods`: the optimizers under test behind one interface (step, the weights to evaluate).
- :mod:`.protocol`: run specs, the tuning protocol (sweeps on validation, seeds), the JSON.
- :mod:`.vision`, :mod:`.lm`, :mod:`.vit_finetune`: the tasks (data, model, evaluation).
- :mod:`.report`: the plot of one study.

Run through ``benchmarks/run_anytime.py``.
"""
