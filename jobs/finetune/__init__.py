"""`bertserve finetune`: text classification, token classification and extractive QA.

recipes   per-task defaults (transformers' run_classification / run_ner / run_qa) and the job's settings
labels    label maps from the data
features  tokenization of each task's rows into model inputs
evaluate  the task metric per epoch (QA through the server's own post-processing)
progress  a bar per epoch on the driver, fed by a Trainer callback
train     the one training function, run in-process or by each Ray Train worker
launch    the two launchers: HF Trainer in this process, or Ray Train's TorchTrainer
cli       the subcommand
"""
