"""Language-model steps on levanter, and the helpers they share.

| module        | steps / helpers                                                       |
|---------------|-----------------------------------------------------------------------|
| train         | train_lm (pretraining, resumable)                                     |
| evaluate      | evaluate (loss, perplexity, bits per byte on validation splits)       |
| eval_run      | one run of levanter's eval_lm (evaluate and chat_eval share it)       |
| sft           | sft (supervised fine-tuning of a train_lm output on chat data)        |
| sft_eval      | chat_eval (held-out loss on the assistant's tokens of conversations)  |
| model         | the Llama shape: MODEL_ATTRS, llama_config, write_reference_config    |
| checkpoints   | latest/final_checkpoint, checkpoint_keep, waitable checkpointer       |
| files         | small JSON files and folders at any fsspec URL                        |
| accelerators  | `accelerator="tpu-v4-8"` -> Ray resources                             |
| tracker       | levanter's metrics as JSON lines beside the output                    |
| report        | loss-curve and progress artifacts, progress lines in the run log      |
| root_logging  | one levanter run at a time, its console output kept in its log        |
| checks        | argument checks of the language-model steps                           |
"""
