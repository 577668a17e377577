"""trainer_args: the one `TrainingArguments` builder of the experiments and the pretraining."""

from lookhere.train.arguments import trainer_args


def test_schedule_logging_and_checkpoints(tmp_path):
    a = trainer_args(tmp_path, steps=1000, batch_size=8, lr=1e-3, warmup_ratio=0.05, seed=3,
                     data_seed=4, log_points=30)
    assert (a.max_steps, a.per_device_train_batch_size, a.learning_rate) == (1000, 8, 1e-3)
    assert a.warmup_steps == 50 and a.logging_steps == 33 and a.weight_decay == 0.0
    assert a.lr_scheduler_type == "cosine" and a.save_strategy == "no"
    assert (a.seed, a.data_seed) == (3, 4)
    b = trainer_args(tmp_path, steps=5000, batch_size=16, lr=1e-3, warmup_ratio=0.03, seed=0,
                     data_seed=0, log_points=50, save_steps=250, progress=False)
    assert b.warmup_steps == 150 and b.logging_steps == 100 and b.disable_tqdm
    assert b.save_strategy == "steps" and b.save_steps == 250 and b.save_total_limit == 1
    tiny = trainer_args(tmp_path, steps=3, batch_size=1, lr=1e-3, warmup_ratio=0.0, seed=0,
                        data_seed=0)
    assert tiny.logging_steps == 1 and tiny.warmup_steps == 0
