"""Evaluation on labelled folders: metrics and the MVTec-layout evaluation with its report."""
