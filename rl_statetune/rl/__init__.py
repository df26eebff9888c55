"""Guide-driven RL on the initial state: alignment rewards on a guide's CoT, policy gradient into ``S0``,
single-process (``loop.run_rl``) and Ray (``distributed.run_distributed``) runs. See docs/rl.md."""
