"""The catalog of fixes rules recommend: our own words, a concrete action, the section it comes from.

Several rules recommend the same action (clipping, a lower learning rate,
variance-scaling init), so fixes live here once and rules rank them per case.
"""

from __future__ import annotations

from doctor import sources as s
from doctor.findings import Fix

CLIP_GRAD_NORM = Fix(
    "Clip the global gradient norm (1.0 is a common start) right before optimizer.step(); "
    "it rescales only the steps that would blow up and leaves normal steps alone.",
    s.THEORY_CLIPPING,
    "loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\noptimizer.step()",
)
CLIP_ONLY_SPIKES = Fix(
    "Set max_norm a little above the typical pre-clip gradient norm (e.g. 1.5-2x its median once training has "
    "settled), so clipping rescales only the rare oversized steps it is meant for.",
    s.THEORY_CLIPPING,
    "norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=2.0 * typical_norm)",
)
CLIP_HIDES_CAUSE = Fix(
    "Find out why the gradient is so large before tuning the clip: take clipping out for a short run and read the "
    "per-layer gradient heatmap; clipping keeps the numbers in range but hides the real problem.",
    s.PRACTICE_CASE,
)
UNSCALE_THEN_CLIP = Fix(
    "With GradScaler, unscale before clipping, or the clip threshold applies to the scaled gradients.",
    s.GENERAL,
    "scaler.scale(loss).backward()\nscaler.unscale_(optimizer)\n"
    "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\nscaler.step(optimizer)\nscaler.update()",
)
SCALE_TARGETS = Fix(
    "Scale the data to order one before it reaches the loss: standardize the inputs and, for regression, the "
    "targets too (predict (y - mean) / std and undo it at inference), so the loss gradient is not huge from step 0.",
    s.PRACTICE_GENERAL,
    "y_mean, y_std = y_train.mean(), y_train.std()\nloss = loss_fn(model(x), (y - y_mean) / y_std)",
)
LOWER_LR = Fix(
    "Lower the learning rate 3-10x and check that the loss curve settles.",
    s.PRACTICE_CASE,
    "for group in optimizer.param_groups:\n    group['lr'] *= 0.1",
)
WARMUP = Fix(
    "Warm the learning rate up linearly over the first few hundred steps, so the random initial weights "
    "do not receive full-size updates.",
    s.THEORY_WARMUP,
    "warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 500))",
)
VARIANCE_INIT = Fix(
    "Initialize weights with variance scaling: Kaiming (He) for ReLU layers, Xavier (Glorot) for tanh or "
    "sigmoid layers, biases at zero, so each layer keeps the scale of its input.",
    s.PRACTICE_GENERAL,
    "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
    "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')\n        nn.init.zeros_(m.bias)",
)
VARIANCE_BY_FAN = Fix(
    "Set each layer's init variance from its own fan-in/fan-out rather than one fixed variance for every layer.",
    s.THEORY_VARIANCE_INIT,
)
BN_HIDES_INIT = Fix(
    "Take batch norm out for a short test run: if the loss turns NaN within a few steps, the init is wrong and "
    "batch norm was hiding it. Fix the init first, then put batch norm back.",
    s.PRACTICE_CASE,
)
NORMALIZE_INPUTS = Fix(
    "Standardize the inputs with training-set statistics (subtract the mean, divide by the standard deviation) "
    "and apply the same transform at evaluation time.",
    s.PRACTICE_GENERAL,
    "mean, std = x_train.mean(dim=0), x_train.std(dim=0)\nx = (x - mean) / (std + 1e-8)",
)
SQUASH_INPUTS = Fix(
    "Compress features with huge or unbounded ranges before standardizing them (log1p, or tanh(x / C) with C "
    "the typical magnitude).",
    s.PRACTICE_GENERAL,
    "x = torch.log1p(x.clamp_min(0))  # or torch.tanh(x / C)",
)
SAME_SCALE = Fix(
    "Bring every input dimension to a common scale (z-score or whitening); unequal scales make gradient "
    "descent oversensitive along some directions.",
    s.THEORY_PREPROCESS,
)
EXEMPT_RECURRENT = Fix(
    "Take the recurrent weights (weight_hh_*) out of weight decay with parameter groups.",
    s.RNN_L2_ANSWER,
    "recurrent = [p for n, p in model.named_parameters() if 'weight_hh' in n]\n"
    "others = [p for n, p in model.named_parameters() if 'weight_hh' not in n]\n"
    "optimizer = torch.optim.Adam([\n    {'params': others, 'weight_decay': 1e-4},\n"
    "    {'params': recurrent, 'weight_decay': 0.0},\n], lr=1e-3)",
)
CLIP_INSTEAD_OF_L2 = Fix(
    "If the L2 penalty was meant to stop exploding gradients, clip the gradient norm instead: clipping bounds "
    "the update without pulling the recurrent matrix towards zero.",
    s.THEORY_CLIPPING,
    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
)
RNN_DROPOUT = Fix(
    "Regularize with dropout on the non-recurrent connections only (inputs, outputs, between stacked layers), "
    "never on the hidden-to-hidden path that carries memory.",
    s.THEORY_RNN_DROPOUT,
    "rnn = nn.LSTM(input_size, hidden, num_layers=2, dropout=0.3)  # between layers, not across time",
)
LAYER_NORM_RNN = Fix(
    "Use layer normalization in the recurrent cell to keep its activations in range; it works per sample and "
    "per time step, where batch norm does not fit an RNN.",
    s.THEORY_LAYER_NORM,
)
EARLY_STOP = Fix(
    "Stop training when the validation loss stops improving and keep the checkpoint with the best validation loss.",
    s.REG_EARLY_STOP,
)
EARLY_STOP_PATIENCE = Fix(
    "Judge early stopping on a smoothed validation curve (a patience of several evaluations): the curve oscillates locally.",
    s.THEORY_EARLY_STOP,
)
DROPOUT = Fix(
    "Add dropout: keep about 50% of hidden units and 80% of inputs during training.",
    s.REG_DROPOUT,
    "nn.Dropout(p=0.5)  # p is the probability of dropping a unit",
)
WEIGHT_DECAY = Fix(
    "Add a small L2 penalty / weight decay (e.g. 1e-4) to the non-recurrent weights.",
    s.REG_L1_L2,
    "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)",
)
AUGMENT = Fix(
    "Enlarge the training set with label-preserving transformations (shifts, flips, rotations, colour "
    "changes) or small Gaussian input noise.",
    s.REG_AUGMENT,
)
SLOWER_DECAY = Fix(
    "Decay the learning rate far more slowly (e.g. a per-step factor of 0.99995 rather than 0.9995), or keep "
    "it constant and lower it only near the end of training.",
    s.PRACTICE_CASE,
    "scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99995)",
)
ADAM_NO_DECAY = Fix(
    "With Adam, a constant learning rate is usually enough; lowering it briefly at the very end can shave off a "
    "little more loss.",
    s.PRACTICE_GENERAL,
)
COSINE_OVER_RUN = Fix(
    "Use a schedule that spans the whole run, such as cosine decay over the total number of steps (optionally after a warm-up).",
    s.THEORY_LR_DECAY,
    "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)",
)
OVERFIT_TINY_BATCH = Fix(
    "Sanity-check the pipeline: train on one or two samples; a correct setup drives that loss to nearly zero. "
    "If it cannot, look for a bug (labels, loss function, data loading) before tuning.",
    s.PRACTICE_CASE,
    "x1, y1 = next(iter(loader))\nfor _ in range(200):\n    loss = loss_fn(model(x1[:2]), y1[:2]); "
    "optimizer.zero_grad(); loss.backward(); optimizer.step()",
)
RAISE_LR = Fix(
    "Raise the learning rate: try a sweep over powers of ten (1e-4, 1e-3, 1e-2) for a few hundred steps each "
    "and keep the largest that still descends smoothly.",
    s.GENERAL,
)
NO_OUTPUT_ACTIVATION = Fix(
    "Remove the activation after the last layer: the output layer should be linear, and the loss applies its own "
    "squashing (CrossEntropyLoss takes raw logits; use BCEWithLogitsLoss instead of Sigmoid + BCELoss).",
    s.PRACTICE_GENERAL,
)
USE_RELU = Fix(
    "Use ReLU (or a relative such as GELU) for hidden layers; sigmoid passes gradients poorly through a deep stack.",
    s.PRACTICE_GENERAL,
)
NORM_LAYERS = Fix(
    "Add normalization layers (batch norm in MLPs/CNNs, layer norm in RNNs and transformers) so pre-activations "
    "stay in the sensitive range of the non-linearity.",
    s.THEORY_BATCH_NORM,
)
ADD_TO_OPTIMIZER = Fix(
    "Pass every trainable parameter to the optimizer (or freeze on purpose with requires_grad_(False)).",
    s.GENERAL,
    "optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)\n"
    "assert {id(p) for g in optimizer.param_groups for p in g['params']} >= "
    "{id(p) for p in model.parameters() if p.requires_grad}",
)
RECOVERABLE_RELU = Fix(
    "Let dead units recover: initialize biases at zero (or slightly positive) and use LeakyReLU or GELU, "
    "and lower the learning rate if units die during training.",
    s.GENERAL,
    "nn.LeakyReLU(0.01)  # and nn.init.zeros_(layer.bias)",
)
FIND_NONFINITE_SOURCE = Fix(
    "Find the first non-finite value: check batches with torch.isfinite and run one step under anomaly "
    "detection to get the operation that produced it.",
    s.GENERAL,
    "assert torch.isfinite(x).all(), 'non-finite input'\nwith torch.autograd.detect_anomaly():\n"
    "    loss = loss_fn(model(x), y); loss.backward()",
)
LOWER_WEIGHT_DECAY = Fix(
    "Lower the weight decay about 10x (small values such as 5e-4 are the usual range for an L2 penalty) and "
    "check that the weight norms stop shrinking toward zero.",
    s.THEORY_WEIGHT_DECAY,
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)",
)
USE_ADAMW = Fix(
    "With Adam, use AdamW (decoupled weight decay) rather than Adam(weight_decay=...): for adaptive optimizers "
    "an L2 term is not the same as weight decay, and through Adam's normalization it drags weights with small "
    "gradients to zero at the full learning rate.",
    s.THEORY_WEIGHT_DECAY,
    "optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)",
)
EXEMPT_BIAS_AND_NORM = Fix(
    "Exempt biases and normalization parameters from weight decay; decaying them brings no regularization benefit.",
    s.GENERAL,
    "decay = [p for n, p in model.named_parameters() if p.ndim >= 2]\n"
    "no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]\n"
    "optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': 1e-2}, {'params': no_decay, 'weight_decay': 0.0}])",
)
