"""Data formats: corpora, queries, qrels, runs and training groups."""

from nestrank.data.corpus import Corpus, Document
from nestrank.data.dataset import Dataset
from nestrank.data.qrels import Qrels
from nestrank.data.queries import Queries
from nestrank.data.run import Run

__all__ = ["Corpus", "Dataset", "Document", "Qrels", "Queries", "Run"]
