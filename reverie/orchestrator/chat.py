"""Chat sessions: the first message makes images; each follow-up starts a new round from the last.

A follow-up is turned into a new Request by an interpreter. The rule interpreter below works
offline and understands the common follow-ups ("make it night", "more like the second one",
"wider", "keep the pose but make her a knight", "again with new seeds"). When an LLM is
configured, it reads the message instead (same `Interpreter` seam), and the rules take over
whenever its answer is missing or unusable.

Every turn is a row in `chat_turns` pointing at its run and at the turn (and run) it started
from, so lineage can walk a conversation back to its first message.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Literal, Optional, Protocol

from pydantic import BaseModel, Field

from reverie.orchestrator.worker import RenderStopped
from reverie.types import ProgressFn, Reference, Render, Request, ReverieError, canonical_json, no_progress, sha256_text

ORDINALS = {"first": 1, "1st": 1, "one": 1, "second": 2, "2nd": 2, "two": 2, "third": 3, "3rd": 3, "three": 3,
            "fourth": 4, "4th": 4, "four": 4, "last": -1}
# From tall to wide; "wider" and "taller" step along it.
ASPECTS = ["9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9", "21:9"]
SIMILAR_STRENGTH = 0.6  # img2img strength for "more like": keep much of the picked image


@dataclass(frozen=True)
class PreviousTurn:
    turn: int
    request: Request
    run_id: str
    best: list[Render]
    turn_id: int


@dataclass(frozen=True)
class Interpretation:
    """How a message was read: the new request, what changed, and which render it points at."""

    request: Request
    changes: tuple[str, ...]
    source: str = "rules"  # rules | llm
    ref_render_id: Optional[int] = None

    @property
    def summary(self) -> str:
        reader = "the LLM" if self.source == "llm" else "offline rules"
        return f"{'; '.join(self.changes)} (read by {reader})"

    def to_dict(self) -> dict:
        return {"source": self.source, "changes": list(self.changes), "ref_render_id": self.ref_render_id,
                "idea": self.request.idea, "aspect": self.request.aspect, "seed": self.request.seed,
                "references": [asdict(r) for r in self.request.references]}


@dataclass
class ChatTurn:
    session: str
    turn: int
    message: str
    run_id: str
    best: list[Render]
    interpretation: Interpretation
    parent_run_id: Optional[str] = None
    notices: list[str] = field(default_factory=list)
    cancelled: bool = False  # Ctrl-C stopped it: what it rendered is kept, and the session goes on from it

    @property
    def prompt(self) -> str:
        """The prompt the turn's best image was rendered from."""
        return self.best[0].prompt if self.best else ""

    def to_dict(self) -> dict:
        return {"session": self.session, "turn": self.turn, "message": self.message, "run_id": self.run_id,
                "parent_run_id": self.parent_run_id, "interpretation": self.interpretation.to_dict(),
                "best": [{"id": r.id, "path": r.path, "seed": r.seed, "score": r.scores.composite if r.scores else None}
                         for r in self.best]}


class Interpreter(Protocol):
    name: str

    def interpret(self, message: str, previous: Optional[PreviousTurn], first: Request, fresh_seed: int) -> Interpretation: ...


class RuleInterpreter:
    """Offline: a few patterns, applied one after another to the same message."""

    name = "rules"

    def __init__(self, available_controls: frozenset[str] = frozenset({"canny", "depth", "pose", "img2img"})):
        # Control kinds this machine can run; a "keep the pose" without pose weights keeps edges.
        self.available_controls = available_controls

    def interpret(self, message: str, previous: Optional[PreviousTurn], first: Request, fresh_seed: int) -> Interpretation:
        text = " ".join(message.split())
        low = text.lower()
        if previous is None or low.startswith(("/new ", "new idea:")):
            idea = re.sub(r"^(/new\s+|new idea:\s*)", "", text, flags=re.I)
            return Interpretation(replace(first, idea=idea, seed=fresh_seed), (f"new idea: {idea}",))
        # References carry over: a follow-up starts from the earlier result unless it picks another.
        req = previous.request
        changes: list[str] = []
        ref_render: Optional[Render] = None

        which = re.search(r"\b(?:like|from|use|take)\s+(?:the\s+)?(?:image\s+|number\s+|#)?"
                          r"(?:(\d+)(?:st|nd|rd|th)?|(first|second|third|fourth|last|one|two|three|four))\b", low)
        if which and ("like" in low or "one" in low or "image" in low):
            rank = int(which.group(1)) if which.group(1) else ORDINALS[which.group(2)]
            req, ref_render, change = more_like(req, previous, rank)
            changes.append(change)

        pose = re.search(r"\bkeep (?:the |her |his |their |its )?(pose|composition|layout|structure|shape|outline)s?\b", low)
        if pose:
            req, ref_render, change = keep_structure(req, previous, ref_render, pose.group(1), self.available_controls)
            changes.append(change)

        edit = re.search(r"\b(?:make|turn) (?:it|her|him|them|this|the \w+)\s+(?:into\s+)?(.+)$", low)
        if edit:
            what = text[edit.start(1):].strip(" .!")
            if re.match(r"(a|an)\s", what.lower()):  # a new subject: "make her a knight"
                req = replace(req, idea=replace_subject(req.idea, what))
                changes.append(f"subject: {what}")
            else:  # a change to the scene: "make it night", "make it blue", in the idea's own words
                req, change = reworded(req, what)
                changes.append(change)

        for word, step in (("wider", 1), ("taller", -1)):
            if re.search(rf"\b{word}\b", low):
                req = replace(req, aspect=_step_aspect(req.aspect, step))
                changes.append(f"aspect {req.aspect}")
        for word, aspect in (("square", "1:1"), ("landscape", "16:9"), ("portrait format", "2:3"), ("vertical", "9:16")):
            if re.search(rf"\b{word}\b", low):
                req = replace(req, aspect=aspect)
                changes.append(f"aspect {aspect}")

        if re.search(r"\b(again|new seeds?|other seeds?|different seeds?|reroll|another (?:round|go|try))\b", low):
            req = replace(req, seed=fresh_seed)
            changes.append(f"new seeds from {fresh_seed}")

        if not changes:
            # Anything else is taken as more description for the same picture.
            req, change = reworded(req, text)
            changes.append(change)
        return Interpretation(req, tuple(changes), "rules", ref_render.id if ref_render else None)


def reworded(req: Request, change: str) -> tuple[Request, str]:
    """The request with its idea saying `change` (a time, weather, season or palette it had is
    replaced, anything else added as a clause), and the line that says how."""
    from reverie.agents.reword import reword

    idea = reword(req.idea, change)
    base = req.idea.rstrip(" .")
    said = f"idea + '{idea[len(base):].strip(' ,.')}'" if idea.startswith(base) else f"idea reworded: {idea}"
    return replace(req, idea=idea), said


# Where the subject of a short idea ends: its setting, an action, or a clause begins.
_SUBJECT_END = re.compile(r",|\s(?:in|at|on|under|over|with|by|near|inside|beside|behind|during|through|across|"
                          r"from|and|who|that|which|is|are|standing|sitting|walking|running|holding|wearing)\s", re.I)


def replace_subject(idea: str, subject: str) -> str:
    """"a fox in the rain, at night" + "a knight" -> "a knight in the rain, at night"."""
    m = _SUBJECT_END.search(idea)
    return subject + (idea[m.start():] if m else "")


def more_like(req: Request, previous: PreviousTurn, rank: int) -> tuple[Request, Render, str]:
    """Start from the rank-th best image of the last turn: its seed, and the image as img2img."""
    ref = _pick(previous.best, rank)
    req = replace(req, seed=ref.seed, references=(Reference(ref.path, "img2img", SIMILAR_STRENGTH),))
    return req, ref, f"more like #{rank if rank > 0 else len(previous.best)} (seed {ref.seed}, img2img from it)"


def keep_structure(req: Request, previous: PreviousTurn, ref: Optional[Render], what: str,
                   available: frozenset[str]) -> tuple[Request, Render, str]:
    """Keep the pose (or composition, or outlines) of an image of the last turn as a control."""
    ref = ref or (previous.best[0] if previous.best else None)
    if ref is None:
        raise ReverieError(f"the last turn has no images to keep the {what} from: send a new idea first")
    kind = "pose" if what == "pose" else "depth" if what in ("composition", "layout") else "canny"
    fallback = ""
    if kind not in available:
        kind, fallback = "canny", f", no {kind} weights so canny edges"
    req = replace(req, references=(Reference(ref.path, kind, 0.8),))
    return req, ref, f"keep the {what} of seed {ref.seed} ({kind} control{fallback})"


def _pick(best: list[Render], rank: int) -> Render:
    if not best:
        raise ReverieError("the last turn has no images to choose from: send a new idea first")
    if rank == -1:
        return best[-1]
    if not 1 <= rank <= len(best):
        raise ReverieError(f"the last turn showed {len(best)} images: say a number from 1 to {len(best)}")
    return best[rank - 1]


def _step_aspect(aspect: str, step: int) -> str:
    from reverie.render.resolution import parse_aspect

    ratio = parse_aspect(aspect)
    ratios = [parse_aspect(a) for a in ASPECTS]
    nearest = min(range(len(ASPECTS)), key=lambda i: abs(ratios[i] - ratio))
    return ASPECTS[max(0, min(len(ASPECTS) - 1, nearest + step))]


class FollowUp(BaseModel):
    """What the LLM reads in a message (the JSON it must answer with)."""

    kind: Literal["new", "follow_up"]
    idea: str = Field(min_length=1, max_length=2000)  # the whole idea for the next round
    aspect: Optional[str] = None
    new_seeds: bool = False
    like_image: Optional[int] = None  # 1-based, among the images shown last turn
    keep: Optional[Literal["pose", "composition", "outline"]] = None


FOLLOW_UP_SYSTEM = """You read one message of a conversation with an image generator and say what the next
round should be. The user sees a few images per turn and talks about them: "make it night", "more
like the second one", "wider", "keep the pose but make her a knight", "again with new seeds".
Answer only with a JSON object:
{"kind": "new" or "follow_up", "idea": the full short idea for the next round (the earlier idea with
the change worked in, or the new idea), "aspect": "W:H" if the shape should change else null,
"new_seeds": true when they ask for other variations of the same thing, "like_image": the 1-based
number of the image they point at or null, "keep": "pose" | "composition" | "outline" | null}.
Keep the idea short, in the user's words; do not write a long prompt."""


class LLMInterpreter:
    """Asks the configured LLM to read the message; any failure falls back to the rules."""

    name = "llm"

    def __init__(self, llm, fallback: RuleInterpreter, notice=lambda message: None):
        self.llm, self.fallback, self.notice = llm, fallback, notice

    def interpret(self, message: str, previous: Optional[PreviousTurn], first: Request, fresh_seed: int) -> Interpretation:
        from reverie.agents.llm import LLMUnavailable
        from reverie.render.resolution import parse_aspect

        if previous is None:  # the first message is the idea, in the person's own words
            return self.fallback.interpret(message, previous, first, fresh_seed)
        context = {"message": message}
        if previous is not None:
            context["last_turn"] = {"idea": previous.request.idea, "aspect": previous.request.aspect,
                                    "images_shown": len(previous.best)}
        try:
            answer = self.llm.structured(FOLLOW_UP_SYSTEM, json.dumps(context, ensure_ascii=False), FollowUp,
                                         purpose="chat", system_hash=sha256_text(FOLLOW_UP_SYSTEM)[:16], temperature=0.2)
            if answer.kind == "new" or previous is None:
                return Interpretation(replace(first, idea=answer.idea, seed=fresh_seed), (f"new idea: {answer.idea}",), "llm")
            req, changes, ref = previous.request, [], None
            if answer.idea.strip() != req.idea:
                req = replace(req, idea=answer.idea.strip())
                changes.append(f"idea: {req.idea}")
            if answer.like_image:
                req, ref, change = more_like(req, previous, answer.like_image)
                changes.append(change)
            if answer.keep:
                req, ref, change = keep_structure(req, previous, ref, answer.keep, self.fallback.available_controls)
                changes.append(change)
            if answer.aspect and answer.aspect != req.aspect:
                parse_aspect(answer.aspect)
                req = replace(req, aspect=answer.aspect)
                changes.append(f"aspect {answer.aspect}")
            if answer.new_seeds:
                req = replace(req, seed=fresh_seed)
                changes.append(f"new seeds from {fresh_seed}")
            return Interpretation(req, tuple(changes or ["the same again"]), "llm", ref.id if ref else None)
        except (LLMUnavailable, ReverieError) as e:
            self.notice(f"chat: the LLM's reading was not usable ({e}); using the offline rules")
            return self.fallback.interpret(message, previous, first, fresh_seed)


def make_interpreter(studio, progress: ProgressFn) -> Interpreter:
    """Rules, or the LLM in front of them when one is configured."""
    from reverie.agents.llm import LLMClient, llm_settings

    rules = RuleInterpreter(available_controls(studio.home / "models"))
    settings = llm_settings(studio.config.get("llm"), url=studio.llm_url, model=studio.llm_model,
                            timeout=studio.llm_timeout)
    if not settings.configured:
        return rules
    llm = LLMClient(settings, record=lambda call: studio.store.add_llm_call(call, run_id=None))
    return LLMInterpreter(llm, rules, notice=lambda m: studio.notice(m, progress))


def available_controls(models_dir) -> frozenset[str]:
    from reverie.agents.references import weights_dir

    return frozenset({"canny", "img2img"} | {k for k in ("depth", "pose") if weights_dir(models_dir, k) is not None})


# -- sessions in the store -----------------------------------------------------------------
def new_session_name() -> str:
    return time.strftime("chat-%Y%m%d-%H%M%S")


def session_turns(store, name: str) -> list[dict]:
    """The turns of a session, oldest first, with each turn's idea."""
    return store.chats.turns(name)


def shown_images(studio, turn: dict) -> list[Render]:
    """The images a turn showed (its best, at most 4): what "the second one" and /show 2 point at."""
    k = max(1, min(4, json.loads(turn["request_json"]).get("n", 4)))
    return studio.best(turn["run_id"], k=k)


def follows(store, previous: Optional[PreviousTurn], reading: Interpretation) -> Optional[tuple[str, str, str]]:
    """What a follow-up revises: the last turn's idea and its last prompt (a new idea revises nothing)."""
    if previous is None or (reading.changes and reading.changes[0].startswith("new idea")):
        return None
    prompts = store.prompts(previous.run_id)
    if not prompts:
        return None
    return previous.request.idea, prompts[-1]["text"], prompts[-1]["negative"] or ""


def chat_turn(studio, session: str, message: str, progress: ProgressFn = no_progress,
              interpreter: Optional[Interpreter] = None, stop: Optional[threading.Event] = None,
              on_open: Optional[Callable[[Any], None]] = None, abandon: Optional[threading.Event] = None,
              **defaults: Any) -> ChatTurn:
    """Read the message against the session's last turn, make the new round, record the turn.
    Ctrl-C, or setting `stop` (the web studio's stop button), cancels the turn between images and
    keeps it with what it rendered. `on_open(run)` is called once the turn's run is opened (a
    server records which run a request became)."""
    if not session or not str(session).strip():
        raise ReverieError("a chat needs a session name: pass --session NAME (any word)")
    message = (message or "").strip()
    if not message:
        raise ReverieError("the message is empty: describe an image, or say what to change")
    store = studio.store
    sid = store.chats.session_id(session, create=True)
    turns = session_turns(store, session)
    previous = None
    if turns:
        last = turns[-1]
        previous = PreviousTurn(turn=last["turn"], request=Request.from_dict(json.loads(last["request_json"])),
                                run_id=last["run_id"], best=shown_images(studio, last), turn_id=last["id"])
    number = len(turns) + 1
    defaults = {k: v for k, v in defaults.items() if v is not None}
    first = studio.request(message, **defaults)
    fresh_seed = int(sha256_text(f"{session}:{number}")[:8], 16) % (2**31 - 2**20)
    # One interpreter (and so one LLM client) for the whole session.
    interpreter = interpreter or studio.cached("chat_interpreter", lambda: make_interpreter(studio, progress))
    reading = interpreter.interpret(message, previous, first, fresh_seed)
    req = reading.request
    # Per-turn options (n, rounds, size) follow what the caller passes now.
    for key in ("n", "rounds", "megapixels", "steps", "cfg", "negative", "sampler", "exact", "seed", "style",
                "handoff_steps"):
        if key in defaults:
            req = replace(req, **{key: defaults[key]})
    req = replace(req, revises=follows(store, previous, reading))
    req = studio.request(req.idea, **{k: v for k, v in req.to_dict().items() if k != "idea"})
    # A change to the picture the person saw edits it; a new picture renders from text (chat_edit).
    edit, why = chat_edit_for(studio, message, reading, previous, req, progress)
    reading = replace(reading, changes=reading.changes + ((why,) if why else ()),
                      ref_render_id=edit.render.id if edit else reading.ref_render_id)
    run_req = req
    if edit is not None:  # the turn's request stays the conversation's idea; its run is the edit
        from reverie.orchestrator.edit import edit_request

        run_req = edit_request(studio, str(edit.render.id), edit.instruction, n=req.n, rounds=req.rounds,
                               seed=fresh_seed, profile=req.profile, progress=progress)
    cancelled = False
    with studio.open_run(run_req, progress=progress) as run:
        if on_open is not None:
            on_open(run)
        try:
            final = run.drive(progress=progress, stop=stop)
            stop_reason = final.get("stop_reason", "")
        except (KeyboardInterrupt, RenderStopped):
            if abandon is not None and abandon.is_set():
                raise  # a server stopping: no turn is recorded; its next start makes it, resuming the run
            # Ctrl-C cancels the turn, not the chat: its run is kept (interrupted) and so is the turn.
            cancelled, stop_reason = True, ""
    result = run.result(k=min(req.n, 4), stop_reason=stop_reason)
    store.chats.add_turn(
        sid, turn=number, message=message, interpretation_json=canonical_json(reading.to_dict()),
        request_json=canonical_json(req.to_dict()), run_id=result.run_id,
        parent_turn_id=previous.turn_id if previous else None, parent_run_id=previous.run_id if previous else None,
        ref_render_id=reading.ref_render_id)
    return ChatTurn(session=session, turn=number, message=message, run_id=result.run_id, best=result.best,
                    interpretation=Interpretation(req, reading.changes, reading.source, reading.ref_render_id),
                    parent_run_id=previous.run_id if previous else None, notices=list(result.notices),
                    cancelled=cancelled)


def chat_edit_for(studio, message: str, reading: Interpretation, previous: Optional[PreviousTurn], req: Request,
                  progress: ProgressFn):
    """(the ChatEdit of this turn or None, the line saying which and why); nothing for a first turn."""
    from reverie.orchestrator.chat_edit import choose
    from reverie.orchestrator.edit import repair_possible
    from reverie.profiles import get_profile

    if previous is None:
        return None, ""
    profile = get_profile(req.profile)
    can_edit = repair_possible(studio.engine_for(profile, progress), profile)
    return choose(message, reading.changes, previous.best, can_edit)


# -- slash commands --------------------------------------------------------------------------
CHAT_HELP = """commands:
  /help        this list
  /show N      the N-th image of the last turn: its path, seed, score and prompt
  /undo        forget the last turn (its images stay in the lineage)
  /session     this session's name and its turns
  /new IDEA    start over with a new idea
"I like the second one" / "not the first" records a pick / reject (for `reverie taste`), renders nothing
  /quit        leave; continue later with --session NAME
Anything else is a message: the first describes an image, later ones say what to change
("make it night", "more like the second one", "keep the pose but make it a knight", "wider")."""


@dataclass(frozen=True)
class CommandReply:
    text: str
    quit: bool = False


_ORDINAL = r"(?:the\s+)?(?:image\s+|number\s+|#)?(\d+|first|second|third|fourth|last)(?:st|nd|rd|th)?(?:\s+(?:one|image))?"
# A whole message that only states a choice about an image the last turn showed: it is recorded
# (as `reverie pick` / `reverie reject` would, source "chat"), and nothing is rendered. "more
# like the second one" is not one: it asks for a new round.
_PICK = re.compile(rf"^(?:i\s+(?:really\s+)?(?:like|love)|i'?ll\s+take|pick|keep)\s+{_ORDINAL}\s*[.!]*$", re.I)
_REJECT = re.compile(rf"^(?:not|no\s+to|reject|drop|i\s+(?:don'?t|do\s+not)\s+like|i\s+dislike)\s+{_ORDINAL}\s*[.!]*$",
                     re.I)


def choice_in(message: str) -> Optional[tuple[str, int]]:
    """("pick" | "reject", 1-based rank, -1 for the last) when the message only states a choice."""
    text = " ".join(message.split())
    for choice, pattern in (("pick", _PICK), ("reject", _REJECT)):
        m = pattern.match(text)
        if m:
            word = m.group(1).lower()
            return choice, int(word) if word.isdigit() else ORDINALS[word]
    return None


def is_command(message: str) -> bool:
    """A slash command or a choice ("I like the second one"), never a prompt. `/new IDEA` is a
    message (the interpreter reads it)."""
    if choice_in(message) is not None:
        return True
    return message.startswith("/") and not re.match(r"/new\s+\S", message)


def chat_command(studio, session: str, message: str) -> CommandReply:
    """Answer a slash command; nothing is rendered. An unknown one is a ReverieError naming /help."""
    choice = choice_in(message)
    if choice is not None:
        return record_choice(studio, session, *choice)
    word, _, arg = message.strip().partition(" ")
    word, arg = word.lower(), arg.strip()
    if word in ("/quit", "/exit", "/q"):
        return CommandReply("", quit=True)
    if word in ("/help", "/h", "/?"):
        return CommandReply(CHAT_HELP)
    turns = session_turns(studio.store, session)
    if word == "/session":
        if not turns:
            return CommandReply(f"session {session}: no turns yet")
        lines = [f"session {session}: {len(turns)} turn(s)"]
        lines += [f"  {t['turn']}. {t['message']}  ->  {t['idea']} (run {t['run_id']})" for t in turns]
        return CommandReply("\n".join(lines))
    if word == "/undo":
        gone = studio.store.chats.delete_last_turn(session)
        if gone is None:
            return CommandReply("nothing to undo: this session has no turns")
        if gone["turn"] == 1:
            return CommandReply("turn 1 forgotten; the next message starts over")
        return CommandReply(f"turn {gone['turn']} forgotten ({gone['message']}); the next message follows turn "
                            f"{gone['turn'] - 1}")
    if word == "/show":
        if not turns:
            return CommandReply("no images yet: describe one first")
        best = shown_images(studio, turns[-1])
        if not arg.isdigit():
            raise ReverieError(f"/show needs a number from 1 to {len(best)}, e.g. /show 2")
        r = _pick(best, int(arg))
        score = f"{r.scores.composite:.3f} ({r.scores.scorer})" if r.scores else "unscored"
        return CommandReply(f"#{arg} seed {r.seed} score {score}\n{r.path}\nprompt: {r.prompt}")
    raise ReverieError(f"unknown command {word}: /help lists the commands")


def record_choice(studio, session: str, choice: str, rank: int) -> CommandReply:
    """Record a pick or reject of an image the last turn showed (source "chat"); taste learns from it."""
    turns = session_turns(studio.store, session)
    if not turns:
        raise ReverieError("no images yet to choose from: describe one first")
    r = _pick(shown_images(studio, turns[-1]), rank)
    studio.store.picks.record(r.id, choice, source="chat")
    which = f"#{rank}" if rank > 0 else "the last one"
    return CommandReply(f"{choice}ed {which} (render {r.id}, seed {r.seed}); `reverie taste` learns from your choices")
