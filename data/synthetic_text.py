"""A synthetic pre-training corpus with learnable structure, in the raw-text form BERT's script reads.

`generate` writes one sentence per line and a blank line between documents, as
Wikipedia/BooksCorpus text is laid out for `data/prepare_bert.py`, so tests and
`tiny` configs run the real preparation script and the real reader on it.

The text is a small invented language built so that masked words and next
sentences are predictable from context:

  * agreement: every noun has a lexical gender that only its context shows.
    Determiners and adjectives take the gender and number of their noun; every verb,
    predicative adjective and pronoun of a sentence takes those of the sentence's
    subject (the copula its number), across a relative clause or a prepositional
    phrase whose own noun often disagrees ("la gata que persigue los perros ... duermeta").
  * discourse: a sentence often starts with a pronoun that agrees with the previous
    sentence's subject.
  * topic: each document draws most of its nouns, verbs and adjectives from one of
    NUM_TOPICS sub-lexicons, so a sentence from another document usually does not fit.

    Ese frekrai que suret mi frekrai es dairo sin unas spizis.
    Il es rutrergo bajo los nurs.

(pseudo-words: frekrai, a masculine noun; sur-, a verb; dair-, an adjective; ...).
"""

import dataclasses
import os
import random
import tempfile

from data import prepare_bert

MIN_WORDS, MAX_WORDS = 5, 25
MIN_SENTENCES, MAX_SENTENCES = 5, 30
NUM_TOPICS = 8
TOPIC_SHARE = 0.8  # of content words drawn from the document's topic; the rest from a shared pool
LEXICON_SEED = 20  # the lexicon is the same for every corpus; `seed` picks the documents

# Agreement classes index every inflection table: 2 * plural + feminine.
DETERMINERS = (('lo', 'la', 'los', 'las'), ('un', 'una', 'unos', 'unas'),
               ('ese', 'esa', 'esos', 'esas'), ('mi', 'mia', 'mis', 'mias'))
PRONOUNS = ('il', 'ela', 'ils', 'elas')
ADJECTIVE_ENDINGS = ('o', 'a', 'os', 'as')
VERB_ENDINGS = ('et', 'eta', 'en', 'ena')  # verbs agree with their subject in gender and number
COPULA = ('es', 'son')  # singular, plural
NOUN_PLURAL = 's'
RELATIVE, CONJUNCTION = 'que', 'y'
PREPOSITIONS = ('con', 'sin', 'bajo', 'sobre', 'tras', 'ante', 'hacia', 'desde')
ADVERB_ENDING = 'mente'

ONSETS = ('b', 'bl', 'br', 'd', 'dr', 'f', 'fl', 'fr', 'g', 'gl', 'gr', 'k', 'kr', 'l', 'm', 'n',
          'p', 'pl', 'pr', 'r', 's', 'sk', 'sl', 'sn', 'sp', 'st', 't', 'tr', 'v', 'z')
VOWELS = ('a', 'e', 'i', 'o', 'u', 'ai', 'au', 'ei', 'ou')
CODAS = ('', '', 'l', 'm', 'n', 'r', 'nd', 'lk', 'rg', 'mp')


@dataclasses.dataclass(frozen=True)
class Noun:
  stem: str
  feminine: bool

  def form(self, plural: bool) -> str:
    return self.stem + NOUN_PLURAL if plural else self.stem


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Content words (stems) of one topic, or of the pool every topic shares."""
  nouns: tuple[Noun, ...]
  verbs: tuple[str, ...]
  adjectives: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Lexicon:
  topics: tuple[Vocabulary, ...]
  shared: Vocabulary
  adverbs: tuple[str, ...]


def lexicon(nouns_per_topic: int = 12, verbs_per_topic: int = 6, adjectives_per_topic: int = 4,
            shared_nouns: int = 24, shared_verbs: int = 12, shared_adjectives: int = 8,
            num_adverbs: int = 8) -> Lexicon:
  """The fixed pseudo-vocabulary: 228 stems, about 650 inflected forms, so that a vocabulary of
  1000 pieces holds most words whole. No form of one word is a form of another."""
  rng = random.Random(LEXICON_SEED)
  taken = set(PRONOUNS + COPULA + PREPOSITIONS + (RELATIVE, CONJUNCTION))
  taken.update(form for forms in DETERMINERS for form in forms)

  def new_stem(forms) -> str:
    while True:
      syllables = rng.choice((1, 2, 2))
      stem = ''.join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))
      stem += rng.choice(CODAS)
      if len(stem) > 2 and not taken & set(forms(stem)):
        taken.update(forms(stem))
        return stem

  def vocabulary(num_nouns, num_verbs, num_adjectives) -> Vocabulary:
    return Vocabulary(
        nouns=tuple(Noun(new_stem(lambda s: (s, s + NOUN_PLURAL)), rng.random() < 0.5)
                    for _ in range(num_nouns)),
        verbs=tuple(new_stem(lambda s: [s + e for e in VERB_ENDINGS]) for _ in range(num_verbs)),
        adjectives=tuple(new_stem(lambda s: [s + e for e in ADJECTIVE_ENDINGS])
                         for _ in range(num_adjectives)))

  topics = tuple(vocabulary(nouns_per_topic, verbs_per_topic, adjectives_per_topic)
                 for _ in range(NUM_TOPICS))
  shared = vocabulary(shared_nouns, shared_verbs, shared_adjectives)
  adverbs = tuple(new_stem(lambda s: (s + ADVERB_ENDING,)) + ADVERB_ENDING for _ in range(num_adverbs))
  return Lexicon(topics, shared, adverbs)


class _Writer:
  """Sentences of one document: content words mostly from its topic, agreement by construction."""

  def __init__(self, rng: random.Random, words: Lexicon, topic: int):
    self.rng, self.words, self.topic = rng, words, words.topics[topic]

  def _pick(self, kind: str):
    pool = self.topic if self.rng.random() < TOPIC_SHARE else self.words.shared
    return self.rng.choice(getattr(pool, kind))

  def verb(self, agreement: int) -> str:
    return self._pick('verbs') + VERB_ENDINGS[agreement]

  def adjective(self, agreement: int) -> str:
    return self._pick('adjectives') + ADJECTIVE_ENDINGS[agreement]

  def noun_phrase(self) -> tuple[list[str], int]:
    """Determiner, noun, 0-2 adjectives; and the phrase's agreement class."""
    noun, plural = self._pick('nouns'), self.rng.random() < 0.35
    agreement = 2 * plural + noun.feminine
    words = [self.rng.choice(DETERMINERS)[agreement], noun.form(plural)]
    num_adjectives = self.rng.choices((0, 1, 2), (0.55, 0.35, 0.1))[0]
    return words + [self.adjective(agreement) for _ in range(num_adjectives)], agreement

  def sentence(self, previous: int | None) -> tuple[list[str], int]:
    """Words of one sentence and its subject's agreement class; `previous`: the last sentence's."""
    rng = self.rng
    if previous is not None and rng.random() < 0.3:
      agreement = previous
      words = [PRONOUNS[agreement]]
    else:
      words, agreement = self.noun_phrase()
      modifier = rng.random()
      if modifier < 0.4:  # a relative clause about the subject, with its own object
        words += [RELATIVE, self.verb(agreement)] + self.noun_phrase()[0]
      elif modifier < 0.6:
        words += [rng.choice(PREPOSITIONS)] + self.noun_phrase()[0]
    if rng.random() < 0.2:
      words.append(rng.choice(self.words.adverbs))
    if rng.random() < 0.7:
      words.append(self.verb(agreement))
      words += self.noun_phrase()[0] if rng.random() < 0.85 else []
    else:
      words += [COPULA[agreement // 2], self.adjective(agreement)]
    if rng.random() < 0.35:
      words += [rng.choice(PREPOSITIONS)] + self.noun_phrase()[0]
    if rng.random() < 0.25:
      words += [CONJUNCTION, PRONOUNS[agreement], self.verb(agreement)] + self.noun_phrase()[0]
    return words, agreement


def sentence_text(words: list[str]) -> str:
  text = ' '.join(words)
  return text[0].upper() + text[1:] + '.'


def sample_documents(num_documents: int, seed: int) -> list[list[str]]:
  """Documents of MIN_SENTENCES..MAX_SENTENCES sentences of MIN_WORDS..MAX_WORDS words each."""
  rng, words = random.Random(seed), lexicon()
  documents = []
  for _ in range(num_documents):
    writer = _Writer(rng, words, rng.randrange(NUM_TOPICS))
    sentences, previous = [], None
    for _ in range(rng.randint(MIN_SENTENCES, MAX_SENTENCES)):
      while True:
        sentence, agreement = writer.sentence(previous)
        if MIN_WORDS <= len(sentence) <= MAX_WORDS:
          break
      sentences.append(sentence_text(sentence))
      previous = agreement
    documents.append(sentences)
  return documents


def generate(path: str, num_documents: int, seed: int) -> None:
  """Writes `num_documents` documents to `path`: one sentence per line, a blank line between documents.

  Written to a temporary file and renamed into place, so a crash never leaves half a
  file, and concurrent writers (of the same arguments, hence the same text) do not clash.
  """
  text = '\n\n'.join('\n'.join(document) for document in sample_documents(num_documents, seed)) + '\n'
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile('w', dir=directory, prefix='.synthetic_text-', encoding='utf-8',
                                   delete=False) as staging:
    staging.write(text)
  os.chmod(staging.name, 0o644)  # NamedTemporaryFile's file is private; the text is not
  os.replace(staging.name, path)


def prepare_tiny(data_dir: str, num_documents: int, vocab_size: int, max_seq_length: int,
                 max_predictions_per_seq: int, seed: int, eval_documents: int = 100,
                 dupe_factor: int = 5, num_shards: int = 4, tokenizer: str | None = None) -> str:
  """Generates a corpus next to `data_dir` and prepares it into `data_dir`, unless that is done.

  The text goes to <parent of data_dir>/synthetic_text-<num_documents>-<seed>.txt,
  shared by every preparation of the same corpus (e.g. the 128 and 512 phases), and
  is turned into TFRecords by the same code as `python -m data.prepare_bert`.
  Preparation is atomic: when processes race, the first one's result stays and the
  others find it. Returns data_dir.
  """
  text = os.path.join(os.path.dirname(os.path.abspath(data_dir)),
                      f'synthetic_text-{num_documents}-{seed}.txt')
  if not os.path.exists(text):
    generate(text, num_documents, seed)
  prepare_bert.prepare([text], data_dir, prepare_bert.Settings(
      vocab_size=vocab_size, max_seq_length=max_seq_length,
      max_predictions_per_seq=max_predictions_per_seq, dupe_factor=dupe_factor,
      eval_documents=eval_documents, num_shards=num_shards, seed=seed, tokenizer=tokenizer))
  return data_dir
