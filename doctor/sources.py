"""The knowledge base our fixes cite: the documents in ``shared/docs`` and their section headings.

Headings are quoted verbatim (a meta-test checks each one occurs in its
document) with an English gloss. Fix texts are our own words; the documents are
only cited. ``GENERAL`` marks advice the documents do not cover.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    doc: str  # file name in shared/docs, or "" for general knowledge
    section: str  # the heading as written in the document
    gloss: str  # the heading in English

    def cite(self) -> str:
        if not self.doc:
            return "general knowledge (not from the source documents)"
        return f"{self.doc} § {self.section} ({self.gloss})"

    def to_json(self) -> dict[str, str]:
        return {"doc": self.doc, "section": self.section, "gloss": self.gloss, "citation": self.cite()}


GENERAL = Source("", "", "general knowledge")

# 000: a bidirectional RNN stops learning once L2 is switched on; the answer cites Pascanu/Bengio.
RNN_L2 = "000_430f9255a679334f.txt"
RNN_L2_QUESTION = Source(RNN_L2, "RNN с L2 Regularization перестает учиться", "RNN with L2 regularization stops learning")
RNN_L2_ANSWER = Source(RNN_L2, "Ответы", "answer: L2 on recurrent weights and the point attractor")

# 001: an introduction to regularization methods.
REG = "001_55e311372145c332.txt"
REG_L1_L2 = Source(REG, "正則化", "regularization: L1 and L2")
REG_EARLY_STOP = Source(REG, "早期停止", "early stopping")
REG_NOISE = Source(REG, "ノイズインジェクション", "noise injection")
REG_AUGMENT = Source(REG, "Data Augmentation", "data augmentation")
REG_DROPOUT = Source(REG, "DropOut", "dropout")

# 002: practical advice for training and debugging deep networks, with a worked case.
PRACTICE = "002_70b72f649d619687.txt"
PRACTICE_GENERAL = Source(PRACTICE, "一般的なアドバイス", "general advice")
PRACTICE_DEBUG = Source(PRACTICE, "ニューラルネットワークのデバッグ", "debugging a neural network")
PRACTICE_CASE = Source(PRACTICE, "ケース分析", "case analysis: clipping, LR decay, batch norm hiding bad init")

# 003: notes on optimization and regularization (NNDL chapter 7).
THEORY = "003_c8ba987e1e172dd3.txt"
THEORY_LR_DECAY = Source(THEORY, "学習率の調整", "learning-rate schedules")
THEORY_WARMUP = Source(THEORY, "学習率のWarm Up", "learning-rate warm-up")
THEORY_CYCLIC = Source(THEORY, "周期的な学習率の調整", "cyclic learning rates and restarts")
THEORY_ADAGRAD = Source(THEORY, "AdaGrad, RMSprop, AdaDelta", "adaptive learning rates")
THEORY_CLIPPING = Source(THEORY, "Gradient Clipping", "gradient clipping")
THEORY_INIT = Source(THEORY, "パラメタ初期化", "parameter initialization")
THEORY_VARIANCE_INIT = Source(THEORY, "分散をスケーリングしていく初期化", "variance-scaling initialization")
THEORY_ORTHOGONAL = Source(THEORY, "直交正規化", "orthogonal initialization")
THEORY_PREPROCESS = Source(THEORY, "データの前処理", "data preprocessing")
THEORY_BATCH_NORM = Source(THEORY, "Batch Normalization", "batch normalization")
THEORY_LAYER_NORM = Source(THEORY, "Layer Normalization", "layer normalization")
THEORY_L1_L2 = Source(THEORY, "L1, L2, Linf正則化", "L1/L2 regularization")
THEORY_WEIGHT_DECAY = Source(THEORY, "Weight Decay", "weight decay")
THEORY_EARLY_STOP = Source(THEORY, "Early Stop", "early stopping")
THEORY_RNN_DROPOUT = Source(THEORY, "RNNのドロップアウト", "dropout in RNNs")
THEORY_AUGMENT = Source(THEORY, "Data Augmentation", "data augmentation")

ALL_SOURCES = tuple(v for v in globals().values() if isinstance(v, Source) and v.doc)
