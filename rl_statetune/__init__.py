"""Frozen RWKV-7 + trainable recurrent state."""
