"""What every trainer shares, one small module each; a trainer imports the ones it needs.

    checkpoints   save / find / restore a training checkpoint (safetensors + JSON, atomic,
                  the last N kept), so a resumed run equals an uninterrupted one
    adapters      the peft LoraConfig (LoRA or DoRA) from a trainer's config, attaching it,
                  the adapter-disabled reference model, saving the peft directory
    base_model    the sha256 identity of a base model directory, and the check that an
                  adapter is loaded on the base it was trained on
    launch        one process in-process or N under torchrun; rank / world-size helpers;
                  how many processes a stage starts (GENALIGN_PROCESSES)
    distributed   data parallelism of genalign's own trainers: the process group, each
                  rank's share of a step, gradients summed over the ranks
    seeds         `derive_seed(*parts)`: a seed derived from named parts by a stable hash
    schedules     learning-rate multipliers (linear warmup, cosine decay)
    ema           an exponential moving average of parameters, with decay warm-up
    numerics      what besides config and seeds decides trained weights on a CPU (the
                  torch thread count), for cache keys

This package's `__init__` imports nothing: `import genalign.training` stays cheap, and
torch, peft and transformers are imported by the modules (or inside their functions)
that need them.
"""
