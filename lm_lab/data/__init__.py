"""Data: corpora, tokenizers, token shards, batches (import submodules directly; this package stays light)."""
