"""PaCE (Parsimonious Concept Engineering): a concept dictionary in activation space, a partitioner that
labels concepts benign or undesirable for a task, batched elastic-net sparse coding, and removal of the
undesirable components during generation (with the two baselines it is compared against)."""

from .concepts import TEMPLATES, concept_words, stimuli
from .dictionary import ConceptDictionary, DictionaryFileError, build_dictionary
from .llm_partition import LLMPartitioner
from .partition import TASKS, EmbeddingPartitioner, Partition, SeedPartitioner, Task, TextEmbedder
from .removal import METHODS, OrthogonalProjection, PaCE, VectorSubtraction
from .solver import ElasticNet, objective, sparse_code
from .stimuli import model_stimuli

__all__ = [
    "METHODS", "TASKS", "TEMPLATES", "ConceptDictionary", "DictionaryFileError", "ElasticNet", "EmbeddingPartitioner",
    "LLMPartitioner", "OrthogonalProjection", "PaCE", "Partition", "SeedPartitioner", "Task", "TextEmbedder",
    "VectorSubtraction", "build_dictionary", "concept_words", "model_stimuli", "objective", "sparse_code", "stimuli",
]
