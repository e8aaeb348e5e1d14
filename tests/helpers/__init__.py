"""Shared pieces for the tests; no test module imports another test module, only these.

* :mod:`tests.helpers.nets` - the small MLPs, the Muon/fallback group splitter, the optimizer
  factory and the training loop that the distributed tests compare against;
* :mod:`tests.helpers.sharded` - the FSDP2 LightningModule the ``fsdp2_*_run.py`` scripts run,
  its data, and the cached single-process references their results are checked against;
* :mod:`tests.helpers.trainers` - a quiet Lightning ``Trainer`` factory;
* :mod:`tests.helpers.fashion` - a fake Fashion-MNIST in the idx format;
* :mod:`tests.helpers.partition_models` - the small models the partition tests share;
* :mod:`tests.helpers.spawn` - start gloo worker processes and collect what each rank saved;
* :mod:`tests.helpers.tiny` - the tiny conv net, groups, batches and loop of the optimizer API
  tests;
* :mod:`tests.helpers.matrices` - matrices with known spectra, exact powers, Newton-Schulz bands.

(``tests/callback_testkit.py`` holds the recording module and oracles of the callback tests.)
"""
