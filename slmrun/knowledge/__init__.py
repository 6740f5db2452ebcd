"""Knowledge bases: answers from your own documents, with sources, and "I don't know" when
they hold no answer.

The only package that uses SQLite and the document parsers (markdown-it-py, pypdf, the
standard library's html.parser and csv). Modules: files (what to index), parsers / html_text /
pdf_text / faq (documents to sections), chunking (sections to chunks), db (the SQLite index:
documents, chunks, FTS5, vectors), build (indexing in one transaction), retrieve (lexical,
dense, fusion, reranking), decide (the pure decisions: fusion, FAQ match, abstention), answer
(prompt, constrained reply, footnotes), base (KnowledgeBase and the names).
"""

from __future__ import annotations

from .answer import NO_ANSWER, Answer
from .base import (KnowledgeBase, create_knowledge_base, knowledge_base, list_knowledge_bases,
                   remove_knowledge_base)
from .decide import Thresholds
from .retrieve import Hit

__all__ = ["Answer", "Hit", "KnowledgeBase", "NO_ANSWER", "Thresholds", "create_knowledge_base", "knowledge_base",
           "list_knowledge_bases", "remove_knowledge_base"]
