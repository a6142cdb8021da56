"""Offline jobs on the serving path: `bertserve finetune` (and later batch and evaluate).

data     load a table from a local JSONL/CSV/Parquet file or a Hub dataset; pick columns
scores   the tasks' usual metrics, computed here (accuracy, macro-F1, conlleval, SQuAD)
finetune turn a base checkpoint into a served model, in-process or on Ray Train
"""
