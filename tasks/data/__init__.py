"""Data steps: download, deduplicate, convert, train a tokenizer, tokenize; and the shard and
tokenizer-folder helpers they share.

| module            | steps / helpers                                      |
|-------------------|------------------------------------------------------|
| download          | download_url, download_hf                            |
| dedup, minhash    | dedup (exact and MinHash-LSH fuzzy)                  |
| formats           | text_to_jsonl                                        |
| train_tokenizer   | train_tokenizer (byte-level BPE)                     |
| tokenize          | tokenize (levanter caches, train/validation split)   |
| shards            | JSONL(.gz) shard reading and writing                 |
| tokenizer_files   | save_tokenizer, load_tokenizer (any fsspec path)     |
| checks            | argument checks of the data steps                    |
"""
