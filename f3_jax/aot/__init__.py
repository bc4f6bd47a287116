"""Ahead-of-time compilation of every stage for TPU slices, on a machine without a TPU.

    chips      the TPU chips' published HBM, bf16 peak and HBM bandwidth
    topology   described TPU devices (libtpu's compile-only client) and meshes of them
    programs   each stage's programs, lowerable from shapes (the one adapter to the trainers)
    report     compile one program, read its memory, cost, collectives; roofline estimate
    hlo        collectives and largest buffers from the optimized HLO and XLA's dumps
The command line is f3_jax.aot_compile.
"""
