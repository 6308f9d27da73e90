"""The Hugging Face adapters' private parts: the Trainer's flow (logging steps, clipping, log directory), the loss
read from the model's outputs, and console lines that keep clear of the progress bar.

Nothing here imports ``transformers`` or ``accelerate``; ``gradwatch.transformers`` does.
"""
