"""Guide LLM backends (imported as rl_statetune_guides)."""
