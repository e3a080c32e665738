"""Pure losses over per-step tensors. Each returns unreduced per-example (or per-step)
terms so that a trainer can reduce them the same way however a batch is split or padded."""
