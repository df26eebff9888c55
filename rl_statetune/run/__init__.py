"""The run layer: what every tuning run (supervised ``tune`` and guide-driven RL) shares.

* ``folder``: the run folder's lifecycle (refuses to overwrite a run, resume with config checks, stale temp
  files, atomic checkpoints, the metrics log, result files, signals);
* ``setup``: the frozen model, tokenizer and data a run starts from; the tunables, their optimiser and LR
  schedule; the guarded optimiser step (non-finite loss or gradient) and the final state files;
* ``heldout``: held-out accuracy of the synthetic tasks.
"""
