"""Every hyperparameter an optimizer's builder reads, with its default.

Config files start their optimizer block from here (`base.optimizer(name, ...)`), so
that `--config.optimizer.<field>=...` can override any field of any config. The
optimizer registry (optimizers/__init__.py) checks a block against the fields its
builder reads; a test keeps the two lists equal.
"""

COMMON = dict(
    learning_rate=1e-3,
    weight_decay=0.0,
    # decoupled (AdamW-style, scaled by lr) | coupled (L2 added to the gradient) | before_momentum (added to
    # the direction before the optimizer's own momentum: Shampoo only, the reference's)
    weight_decay_mode='decoupled',
    decay_rank1=False,              # also decay rank-1 parameters (biases, norm scales); every mode honours it
    grad_clip_norm=0.0,             # global-norm clipping threshold; 0 disables
)

BY_NAME = {
    'sgd': dict(momentum=0.9, nesterov=False),
    'adam': dict(b1=0.9, b2=0.999, eps=1e-8),
    # Adam with decoupled weight decay (Loshchilov & Hutter 2019): Adam's defaults; the weight decay
    # is set in each config, as for every optimizer.
    'adamw': dict(b1=0.9, b2=0.999, eps=1e-8),
    # AlgoPerf's NAdamW baseline (Dahl et al. 2023; mlcommons/algorithmic-efficiency,
    # prize_qualification_baselines): eps 1e-8; its b1, b2 and weight decay are set in the configs.
    'nadamw': dict(b1=0.9, b2=0.999, eps=1e-8),
    # Muon (Keller Jordan, github.com/KellerJordan/Muon and kellerjordan.github.io/posts/muon):
    # Nesterov momentum 0.95, 5 Newton-Schulz steps with its quintic coefficients (3.4445, -4.7750,
    # 2.0315); its auxiliary Adam: betas (0.9, 0.95), eps 1e-10, learning rate 3e-4 against Muon's
    # 0.02 (ratio 0.015). adam_paths: leaves whose path contains one of these take Adam, as the
    # README says (embeddings, classifier heads, a ConvNet's first conv), named as tasks/ names
    # them; configs add a task's own (DLRM's last top layer).
    'muon': dict(momentum=0.95, nesterov=True, ns_coeffs=(3.4445, -4.7750, 2.0315), ns_steps=5,
                 adam_paths=('embed', 'table_', 'stem_conv', 'head', 'classifier'),
                 adam_learning_rate_ratio=0.015, b1=0.9, b2=0.95, eps=1e-10),
    'adagrad': dict(initial_accumulator_value=0.1, eps=1e-7),
    # You et al. 2020 (LAMB), as in the MLPerf BERT reference: eps 1e-6.
    'lamb': dict(b1=0.9, b2=0.999, eps=1e-6),
    # You et al. 2017 (LARS), optax.lars' defaults; MLPerf's ResNet-50 reference also uses momentum 0.9.
    'lars': dict(momentum=0.9, nesterov=False, trust_coefficient=0.001, eps=0.0),
    'shampoo': dict(
        block_size=128,
        beta1=0.9,                          # momentum on the grafted direction; 0 disables
        beta2=0.999,                        # statistics EMA; 1.0 = Adagrad-style sums
        diagonal_epsilon=1e-10,             # graft (Adagrad / RMSprop) denominator
        matrix_epsilon=1e-6,                # root damping
        relative_matrix_epsilon=True,       # damping x largest eigenvalue of the statistic
        statistics_start_at_epsilon=False,  # statistics start at matrix_epsilon x I (the reference) instead of 0
        start_preconditioning_step=10,      # graft alone before this many updates
        preconditioning_compute_steps=1,    # refresh roots every k updates
        statistics_compute_steps=1,         # update statistics every k updates
        graft_type='rmsprop_normalized',    # none | sgd | adagrad | rmsprop | <those>_normalized
        graft_granularity='block',          # block (a graft norm per block) | layer (per parameter: the reference)
        nesterov=True,
        moving_average_for_momentum=True,   # m = b1 m + (1-b1) u (the reference: b1 m + u, a 1/(1-b1) larger step)
        separate_graft_momentum=False,      # graft and Shampoo directions each with a momentum from step 0 (reference)
        exponent_override=0,                # root exponent p for every statistic; 0 = 2 x rank
        inverse_failure_threshold=0.1,      # a root whose error (per root_method) is above this keeps the previous one
        skip_preconditioning_dim_size_gt=4096,
        precondition_embeddings=False,      # statistics on the other dims of a parameter with a skipped dim
        precondition_rank1=False,           # rank-1 parameters (biases, norm scales) get statistics too (reference)
        merge_small_dims_block_size=4096,   # merge adjacent dims while their product stays <= this (1: never)
        root_method='newton',               # newton | eigh | warm_eigh (eigenbasis kept between refreshes): docs/shampoo.md
        newton_iterations=100,
        newton_tolerance=1e-6,
        warm_eigh_tolerance=0.02,           # warm_eigh: max |E_ij| / sqrt(d_i d_j) in the kept basis before a fresh eigh
        statistics_dtype='float32',         # float32 | bfloat16 (statistics and roots)
        root_refresh='inline',              # inline (in the step) | async (beside the next steps) | async_host (on the host CPU): docs/shampoo.md
        root_staleness=0,                   # async: updates between a refresh and its roots' first use; 0 = k
    ),
    'kfac': dict(
        damping=1e-3,                      # Tikhonov damping added to the curvature (factored, pi-adjusted)
        curvature_ema=0.95,                # EMA of the Kronecker factors
        curvature_update_period=1,         # steps between factor updates
        curvature_batch_size=0,            # examples of the batch the factors are estimated from; 0 = all
        inverse_update_period=5,           # steps between inverse refreshes (the expensive part)
        estimation_mode='fisher_gradients',  # fisher_gradients | fisher_empirical | fisher_exact | ggn_curvature_prop | ...
        momentum=0.9,                      # heavy-ball momentum on the preconditioned gradient; 0 disables
        nesterov=False,
        norm_constraint=0.0,               # cap the update's squared Fisher norm v'Fv (KL clipping); 0 = off
        adaptive_damping=False,            # Levenberg-Marquardt adaptation, `damping` its initial value
        damping_adaptation_interval=5,     # steps between adaptations (kfac-jax's default)
        damping_adaptation_decay=0.9,      # damping x or / decay**interval when rho > 3/4 or < 1/4 (kfac-jax's)
        min_damping=1e-8,                  # adaptation keeps the damping at least this (kfac-jax's)
        max_factor_dim=8192,               # a layer with a larger factor gets a diagonal block; 0 = no limit
    ),
    # Vyas et al. 2024 (SOAP, arXiv 2409.11321) and the authors' reference (github.com/nikhilvyas/SOAP):
    # betas (0.95, 0.95), eps 1e-8, bases every 10 updates, dims above 10000 one-sided, no merging.
    'soap': dict(
        b1=0.95,
        b2=0.95,
        shampoo_beta=0.95,                 # statistics EMA (reference: b2 unless set); 1.0 = sums
        eps=1e-8,
        precondition_frequency=10,         # eigenbases refreshed (one QR power step) every k updates
        max_precond_dim=10000,             # a larger dim gets no statistic: identity basis on that side
        block_size=10000,                  # blocks of at most this per dim (the reference: none)
        merge_small_dims_block_size=1,     # merge adjacent dims while their product stays <= this (1: never)
    ),
}
