"""Entry points for launching RL runs on a Ray cluster (see launch/submit_entry.py)."""
