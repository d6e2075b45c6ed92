"""The ResNet-50 task block and run lengths shared by its per-optimizer configs.

`paper`: the paper's ResNet-50 v1.5 benchmark as its reference implementation's README
(google-research scalable_shampoo) states it: MLPerf's model and target (75.9% top-1), global
batch 32768, linear warm-up then quadratic decay to 0 over the optimizer's step budget
(Shampoo 1729, LARS and SGD-Nesterov 2512: `paper_steps` below). The warm-up is the
optimizer's own source's (`paper_warmup_steps`): 196 steps in the Shampoo recipe, 25 epochs
in MLPerf's LARS reference, 5 epochs for SGD (Goyal et al. 2017). Label smoothing 0.1
(MLPerf). Data: tfds `imagenet2012` prepared in <data_dir>/tensorflow_datasets (`tfds build
imagenet2012` after placing the two ILSVRC2012 tars in its downloads/manual) or
`--config.task.tfds_dir=/abs/path`. bfloat16 activations, as on the paper's TPUs.
`tiny`: a generated 10-class set of striped JPEGs (data/synthetic_imagenet.py) in the
same tfds form, a ResNet with one basic block per stage at width 16, 32-pixel crops.
"""

import ml_collections

from configs import base

PAPER_BATCH = 32768  # Shampoo reference README: batch 32768
IMAGENET_TRAIN_EXAMPLES = 1_281_167  # ILSVRC2012's training images
SHAMPOO_WARMUP_STEPS = 196  # Shampoo reference README: 196 warm-up steps
TARGET_ACCURACY = 0.759  # MLPerf ResNet-50 v1.5 top-1, the paper's target
IMAGENET_CLASSES = 1000  # ILSVRC2012's classes
GENERATED_CLASSES = 10  # the tiny set's; its model has as many outputs


def get_config(size: str, paper_steps: int,
               paper_warmup_steps: int = SHAMPOO_WARMUP_STEPS) -> ml_collections.ConfigDict:
  """`paper_steps`: the optimizer's step budget in the paper (its quadratic decay ends there);
  `paper_warmup_steps`: its warm-up, the Shampoo recipe's unless the optimizer's source sets one."""
  config = base.get_config(base.check_size(size))
  tiny = size == 'tiny'
  config.task = ml_collections.ConfigDict(dict(
      name='resnet50',
      # depth preset: tiny | 18 | 34 | 50 | 101 | 152 (tasks/resnet.py)
      model='tiny' if tiny else '50',   # Shampoo reference README: MLPerf's ResNet-50 v1.5
      width=16 if tiny else 64,         # He et al. 2016, Table 1: 64 channels in the stem and first stage
      # imagenet: 7x7/2 conv + max pool | small: 3x3/1 conv
      stem='small' if tiny else 'imagenet',  # He et al. 2016, Table 1: 7x7/2 conv + 3x3/2 max pool
      # outputs of the head; the data must agree
      num_classes=GENERATED_CLASSES if tiny else IMAGENET_CLASSES,
      image_size=32 if tiny else 224,   # MLPerf ResNet-50 reference: 224-pixel crops
      label_smoothing=0.1,              # MLPerf reference
      dtype='float32' if tiny else 'bfloat16',  # our choice: activations: float32 | bfloat16, as on TPUs
      # under data_dir (or absolute)
      tfds_dir='synthetic_imagenet' if tiny else 'tensorflow_datasets',  # our choice: tfds's own folder name
      generate=tiny,                    # write the synthetic set if tfds_dir has no imagenet2012
      generated_classes=GENERATED_CLASSES,  # change num_classes with it
      generated_train_per_class=500,
      generated_eval_per_class=50,
      data_seed=0,
      max_eval_examples=0,              # 0 = the whole validation split
  ))
  config.global_batch_size = 64 if tiny else PAPER_BATCH
  # The 50000 validation images in 25 batches, the last padded with weight-0 rows: 2048 splits over
  # the 256 cores and 32 hosts of a TPU v3-256 (2000 would split over neither).
  config.eval_batch_size = 250 if tiny else 2048  # our choice: splits over a v3-256 (above)
  config.num_steps = 600 if tiny else paper_steps
  config.eval_every = 25 if tiny else 40  # our choice: about one epoch (1281167 / 32768 = 39.1 steps)
  config.log_every = 25 if tiny else 10  # our choice: a line every few seconds on a v3-256
  config.checkpoint_every = 300 if tiny else 500  # our choice: bounds the work a preemption loses
  config.schedule.warmup_steps = 50 if tiny else paper_warmup_steps
  config.schedule.decay = 'polynomial'
  config.schedule.power = 2.0  # quadratic
  config.schedule.end_factor = 0.0
  # tiny: SGD and Shampoo level off at 0.97-0.98 top-1 on the generated validation split.
  config.target = ('accuracy', 0.95 if tiny else TARGET_ACCURACY, 'above')
  return config
