"""Evaluation: batched scoring/generation engine, benchmark tasks, reports, lm-eval adapter."""
