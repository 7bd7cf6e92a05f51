"""Custom ops (``torch.ops.rtdetr_fused.*``) and their autograd, one module per kernel family."""
