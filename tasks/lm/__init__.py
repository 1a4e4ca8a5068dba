"""Language-model steps on levanter, and the helpers they share.

| module        | steps / helpers                                                       |
|---------------|-----------------------------------------------------------------------|
| train         | train_lm (pretraining, resumable)                                     |
| evaluate      | evaluate (loss, perplexity, bits per byte on validation splits)       |
| model         | the Llama shape: MODEL_ATTRS, llama_config, write_reference_config    |
| checkpoints   | latest_checkpoint, final_checkpoint, checkpoint_keep                  |
| files         | small JSON files and folders at any fsspec URL                        |
| accelerators  | `accelerator="tpu-v4-8"` -> Ray resources                             |
| tracker, report, root_logging | levanter metrics, loss-curve artifacts, logging      |
| checks        | argument checks of the language-model steps                           |
"""
