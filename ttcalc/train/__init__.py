"""Training regimes: pretrain-freeze-finetune, joint and plain supervised (see ``regimes``)."""
from ttcalc.train.config import DataConfig, PriorConfig, StageConfig, TrainConfig, load_config
from ttcalc.train.regimes import train_model
from ttcalc.train.trainer import Targets, evaluate_loss, train_stage

__all__ = ["DataConfig", "PriorConfig", "StageConfig", "TrainConfig", "load_config", "train_model",
           "Targets", "evaluate_loss", "train_stage"]
