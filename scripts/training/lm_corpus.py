"""Text for the demo language model that every machine has offline: the Python standard library's docstrings.

No model or data hub is reachable here, but every Python installation carries a few MB of careful English prose
about programming in its modules' docstrings. ``stdlib_documents`` gathers those of a fixed list of well-documented
modules (the module, then its own classes, their methods and its functions, in name order), one document per
docstring, whitespace normalised (prose paragraphs unwrapped to one line), exact duplicates dropped. Then one short
chat per documented function, method or class, in the demo model's chat template ("What does json.dumps do?"
answered with its docstring's first paragraph), so that the chat API gets an answer in kind. The text depends on
the Python version only, which the trained model records. ``--corpus FILE`` takes the user's own text
instead (``file_documents``), as it is written.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path

# Pure-Python (or fully documented) modules with long, prose-like docstrings; imported only to read them.
STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio.events", "asyncio.locks", "asyncio.queues", "asyncio.streams",
    "asyncio.tasks", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "concurrent.futures._base",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib", "dis", "doctest", "email.message",
    "email.utils", "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "heapq", "hmac", "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "inspect",
    "ipaddress", "json", "json.decoder", "json.encoder", "locale", "logging", "logging.handlers", "mailbox",
    "mimetypes", "multiprocessing.pool", "numbers", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools",
    "pkgutil", "platform", "plistlib", "poplib", "pprint", "pydoc", "queue", "random", "re", "sched", "secrets",
    "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "typing",
    "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)  # fmt: skip
MIN_CHARS = 40  # shorter docstrings ("Return self==value.") are boilerplate, not prose
MAX_ANSWER_CHARS = 400  # a chat's answer is a docstring's first paragraph, when it is a summary this short
# The demo model's chat template (a plain <|role|> line before each message); ``chat_document`` writes the same text.
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")  # fmt: skip


def chat_document(question: str, answer: str) -> str:
    """A user's question and the assistant's answer as ``CHAT_TEMPLATE`` renders them."""
    return f"<|user|>\n{question}\n<|assistant|>\n{answer}\n"


def normalise(text: str) -> str:
    """Trailing spaces gone, tabs as spaces, at most one blank line in a row; indentation (code) is kept."""
    lines = [line.rstrip().replace("\t", "    ") for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def unwrap(text: str) -> str:
    """Join the hard-wrapped lines of each prose paragraph into one line (a newline every ~70 characters would be the
    commonest token); paragraphs holding code (indented lines, ``>>>`` examples) keep their lines."""
    paragraphs = text.split("\n\n")
    for i, paragraph in enumerate(paragraphs):
        lines = paragraph.split("\n")
        if not any(line.startswith((" ", ">>>")) for line in lines):
            paragraphs[i] = " ".join(line.strip() for line in lines)
    return "\n\n".join(paragraphs)


def is_chat(document: str) -> bool:
    return document.startswith("<|user|>\n")


def _docstrings(module) -> list[tuple[str, str, str]]:
    """``(kind, dotted name, docstring)`` of the module, then of its own classes (with their methods) and functions,
    by name."""
    prefix = module.__name__
    found = [("module", prefix, inspect.getdoc(module))]
    for name, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere: documented there
        if inspect.isclass(obj):
            found.append(("class", f"{prefix}.{name}", inspect.getdoc(obj)))
            found += [("function", f"{prefix}.{name}.{method}", inspect.getdoc(member))
                      for method, member in sorted(vars(obj).items()) if callable(member)]  # fmt: skip
        elif inspect.isfunction(obj):
            found.append(("function", f"{prefix}.{name}", inspect.getdoc(obj)))
    return [(kind, name, doc) for kind, name, doc in found if doc]


def _chat(kind: str, name: str, doc: str) -> str | None:
    """The chat about one documented object, or None when its first paragraph is no short prose summary."""
    summary = doc.split("\n\n", 1)[0]
    if kind == "module" or not MIN_CHARS <= len(summary) <= MAX_ANSWER_CHARS or ">>>" in summary:
        return None
    question = f"What is {name}?" if kind == "class" else f"What does {name} do?"
    return chat_document(question, summary)


def stdlib_documents(modules: tuple[str, ...] = STDLIB_MODULES) -> tuple[list[str], list[str]]:
    """``(documents, modules read)``: one normalised docstring per document, in a fixed order, without duplicates,
    then the chats (``_chat``).

    A module this Python lacks is skipped (the modules read are returned, for the manifest)."""
    documents, chats, seen, read = [], [], set(), []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        read.append(name)
        with warnings.catch_warnings():  # reading a deprecated alias's docstring (typing.io) warns
            warnings.simplefilter("ignore", DeprecationWarning)
            docs = _docstrings(module)
        for kind, dotted, raw in docs:
            doc = unwrap(normalise(raw))
            if len(doc) >= MIN_CHARS and doc not in seen:
                seen.add(doc)
                documents.append(doc)
                chats.append(_chat(kind, dotted, doc))
    return documents + [chat for chat in chats if chat], read


def stdlib_description(modules: list[str]) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"docstrings of {len(modules)} Python {version} stdlib modules, and chats on their summaries"


class CorpusError(ValueError):
    """The user's text file cannot be used as it is; the message names the file and why."""


def file_documents(path: Path) -> list[str]:
    """A UTF-8 text file's documents: its paragraphs (split at blank lines), or, in a file without blank lines, its
    non-empty lines. At least two are needed: one is held out to measure perplexity."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path} {'is not a file' if path.exists() else 'does not exist'}: --corpus takes a "
                          "UTF-8 text file")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise CorpusError(f"{path} is empty: --corpus takes a UTF-8 text file")
    parts = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.splitlines()
    documents = [normalise(part) for part in parts if part.strip()]
    if len(documents) < 2:
        raise CorpusError(f"{path} holds one document only; separate documents by blank lines (or write one per "
                          "line) so that some can be held out")  # fmt: skip
    return documents
