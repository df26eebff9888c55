"""Triton kernels for the WKV-7 recurrence (imported as rl_statetune_kernels)."""
