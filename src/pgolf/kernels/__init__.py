"""Optional Triton kernels behind torch.library custom ops; hw.py decides when they run.

Triton is imported inside functions only: `import pgolf` and a bundled train_gpt.py work
without it, and each op falls back to its eager PyTorch reference where no kernel can run.
"""
