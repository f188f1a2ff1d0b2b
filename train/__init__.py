"""Training: Arrow -> chat dataset, LoRA/QLoRA SFT, eval vs base, merge, GGUF export + verify."""
