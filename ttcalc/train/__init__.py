"""Training: force-field regimes (pretrain-freeze-finetune, joint, supervised; ``regimes``),
multi-task loops (``multitask``) and property fine-tuning (Scratch/FT/LP/MFT; ``finetune``)."""
from ttcalc.train.config import DataConfig, PriorConfig, StageConfig, TrainConfig, load_config
from ttcalc.train.finetune import REGIMES, FinetuneConfig, finetune_property
from ttcalc.train.multitask import PrefactorSchedule, Task, force_field_task, property_task, train_multitask
from ttcalc.train.regimes import train_model
from ttcalc.train.trainer import Targets, evaluate_loss, train_stage

__all__ = ["DataConfig", "PriorConfig", "StageConfig", "TrainConfig", "load_config", "train_model",
           "Targets", "evaluate_loss", "train_stage", "REGIMES", "FinetuneConfig", "finetune_property",
           "PrefactorSchedule", "Task", "force_field_task", "property_task", "train_multitask"]
