"""Training: train state, optimizer, loss, the train step and the loop (CPT; SFT/DPO reuse it)."""
