"""The built-in multi-adapter inference server (`peft-runtime serve`): one base model, many LoRA-family
adapters hot-loaded at run time and mixed in one batch. Importing this package is cheap: torch is imported
only by the modules that run the model (registry, generation, batching, server)."""
