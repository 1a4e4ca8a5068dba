"""Language-model steps on levanter, and the helpers they share.

| module         | steps / helpers                                                       |
|----------------|-----------------------------------------------------------------------|
| train          | train_lm (pretraining, resumable) and its argument checks             |
| train_run      | one levanter training run, train_lm's and sft's: OPTIM_ATTRS          |
| evaluate       | evaluate (loss, perplexity, bits per byte on validation splits)       |
| eval_run       | one run of levanter's eval_lm (evaluate and chat_eval share it)       |
| sft            | sft (supervised fine-tuning of a train_lm output on chat data)        |
| chat_template  | the default chat template, its check, a tokenizer carrying it         |
| chat_data      | chat files, levanter's chat cache and data config                     |
| sft_eval       | chat_eval (held-out loss on the assistant's tokens of conversations)  |
| harness        | harness_eval (lm-evaluation-harness through levanter)                 |
| harness_folder | local lm-eval task folders: harness_tasks(), their checks             |
| scaling        | analyze_scaling, train_optimal (isoflop fits: scaling_fit)            |
| scaling_plot   | the scaling picture and its artifacts                                 |
| model          | the Llama shape: MODEL_ATTRS, check_shape, llama_config, reference    |
| checkpoints    | checkpoints, HF exports and train_config.json of a training output    |
| files          | small JSON files and folders at any fsspec URL                        |
| accelerators   | `accelerator="tpu-v4-8"` -> Ray resources; a step's `ray_options`     |
| tracker        | levanter's metrics as JSON lines beside the output                    |
| report         | loss-curve and progress artifacts, progress lines in the run log      |
| root_logging   | one levanter run at a time, its console output kept in its log        |
| checks         | old path of train_lm's argument check (now beside its step)           |
"""
