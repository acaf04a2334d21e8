// Prompts as A1111 reads them (picserve/engine/prompts.py follows its parser): `(word)` ×1.1,
// `[word]` ÷1.1, `(word:1.3)`, `\(` for a literal parenthesis, `BREAK` for a new chunk; and the
// extra-network tags `<lora:name:0.8>` that A1111 users paste, which the playground turns into
// SubModelList entries. The highlight is a mirror behind the textarea (the textarea stays the control).

const TOKEN = /<(?:lora|lyco|hypernet):[^<>]*>|\\[()[\]\\]|\(|\[|:\s*[+-]?[.\d]+\s*\)|\)|\]|[^\\()[\]:<]+|[\s\S]/gi;
const NETWORK = /<(lora|lyco|hypernet):([^:<>]+)(?::\s*([+-]?[\d.]+))?[^<>]*>/gi;

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The prompt as highlight pieces: `[{ text, classes }]`, concatenating back to `text`.
 * Classes: `up1..up3` / `down1..down3` (the weight of the text, by how far from 1), `weight` (the
 * number of `(x:1.2)`), `paren`, `net` (an extra-network tag), `esc`, `break`, `emb` (a known
 * embedding), `trigger` (a chosen LoRA's trigger word), `error` (a bracket without its pair). */
export function highlight(text, { embeddings = [], triggers = [] } = {}) {
  const tokens = Array.from(text.matchAll(TOKEN), (m) => m[0]);
  // 1. Pair the brackets as A1111 does: one stack for ( and one for [; a closer without an opener is an error.
  const partner = new Map();
  const weightOf = new Map();
  const round = [];
  const square = [];
  const errors = new Set();
  tokens.forEach((token, i) => {
    if (token === "(") round.push(i);
    else if (token === "[") square.push(i);
    else if (token === ")" || (token.startsWith(":") && token.endsWith(")"))) {
      if (!round.length) errors.add(i);
      else {
        const open = round.pop();
        partner.set(open, i);
        const given = token === ")" ? 1.1 : Number.parseFloat(token.slice(1));
        weightOf.set(open, Number.isFinite(given) ? given : 1.1);
      }
    } else if (token === "]") {
      if (!square.length) errors.add(i);
      else {
        const open = square.pop();
        partner.set(open, i);
        weightOf.set(open, 1 / 1.1);
      }
    }
  });
  for (const open of [...round, ...square]) errors.add(open);

  // 2. Each piece's weight is the product of the groups around it. Within text: BREAK (as A1111 spells
  //    it), known embeddings (exact, as the server finds them) and trigger words (any case).
  const words = [...new Set([...embeddings, ...triggers].filter(Boolean))].sort((a, b) => b.length - a.length);
  const alternatives = ["\\bBREAK\\b", ...(words.length ? [`(?<![\\w-])(?:${words.map(escapeRegExp).join("|")})(?![\\w-])`] : [])];
  const special = new RegExp(alternatives.join("|"), "gi");
  const embeddingSet = new Set(embeddings);
  const triggerSet = new Set(triggers.map((t) => t.toLowerCase()));
  const kindOf = (word) => {
    if (word === "BREAK") return "break";
    if (embeddingSet.has(word)) return "emb";
    if (triggerSet.has(word.toLowerCase())) return "trigger";
    return null;
  };
  const pieces = [];
  const open = []; // [closing index, weight]
  let weight = 1;
  const level = () => {
    const distance = Math.abs(Math.log(weight));
    if (distance < 0.01) return [];
    const strength = distance < 0.15 ? 1 : distance < 0.4 ? 2 : 3;
    return [`${weight > 1 ? "up" : "down"}${strength}`];
  };
  tokens.forEach((token, i) => {
    if (errors.has(i)) {
      pieces.push({ text: token, classes: ["error"] });
      return;
    }
    if (partner.has(i)) {
      pieces.push({ text: token, classes: ["paren", ...level()] });
      open.push([partner.get(i), weight]);
      weight *= weightOf.get(i);
      return;
    }
    if (open.length && open[open.length - 1][0] === i) {
      weight = open.pop()[1];
      if (token.length > 1) {
        // ":1.2)": the number is the group's weight
        const classes = level();
        pieces.push({ text: token.slice(0, -1), classes: ["weight", ...classes] });
        pieces.push({ text: ")", classes: ["paren", ...classes] });
      } else pieces.push({ text: token, classes: ["paren", ...level()] });
      return;
    }
    if (token.startsWith("<") && token.length > 1) pieces.push({ text: token, classes: ["net"] });
    else if (token.startsWith("\\") && token.length === 2) pieces.push({ text: token, classes: ["esc", ...level()] });
    else {
      let last = 0;
      for (const m of token.matchAll(special)) {
        const kind = kindOf(m[0]);
        if (!kind) continue;
        if (m.index > last) pieces.push({ text: token.slice(last, m.index), classes: level() });
        pieces.push({ text: m[0], classes: kind === "break" ? [kind] : [kind, ...level()] });
        last = m.index + m[0].length;
      }
      if (last < token.length) pieces.push({ text: token.slice(last), classes: level() });
    }
  });
  return pieces;
}

/** Render `highlight(...)` pieces into `mirror` (an element behind the textarea). */
export function renderHighlight(mirror, text, options) {
  const fragment = document.createDocumentFragment();
  for (const piece of highlight(text, options)) {
    if (!piece.classes.length) fragment.append(piece.text);
    else {
      const span = document.createElement("span");
      span.className = piece.classes.map((c) => `hl-${c}`).join(" ");
      span.textContent = piece.text;
      fragment.append(span);
    }
  }
  // a final newline needs a character after it to take up its line, as it does in the textarea
  fragment.append("\u200b");
  mirror.replaceChildren(fragment);
}

/** `<lora:name:0.8>` and `<hypernet:name:1>` tags out of a prompt: `{ text, networks }`, the tags
 * removed (A1111 does the same) and each as `{ kind, code, weight }` (weight null when not given). */
export function extractNetworks(prompt) {
  const networks = [];
  const text = prompt.replace(NETWORK, (_, kind, code, weight) => {
    networks.push({
      kind: kind.toLowerCase() === "hypernet" ? "hypernetwork" : "lora",
      code: code.trim(),
      weight: weight === undefined ? null : Number.parseFloat(weight),
    });
    return "";
  });
  const tidy = text
    .replace(/[ \t]+,/g, ",")
    .replace(/,[ \t]*(?:,[ \t]*)+/g, ", ")
    .replace(/[ \t]{2,}/g, " ")
    .replace(/^[\s,]+|[\s,]+$/g, "");
  return { text: networks.length ? tidy : prompt, networks };
}

/** Insert `word` at the textarea's caret (with a comma between it and a neighbouring word). */
export function insertWord(textarea, word) {
  const { value } = textarea;
  const start = textarea.selectionStart ?? value.length;
  const end = textarea.selectionEnd ?? value.length;
  const before = value.slice(0, start);
  const after = value.slice(end);
  const lead = before && !/[\s,([]$/.test(before) ? ", " : "";
  const trail = after && !/^[\s,)\]]/.test(after) ? ", " : "";
  textarea.value = before + lead + word + trail + after;
  const caret = (before + lead + word).length;
  textarea.setSelectionRange(caret, caret);
  textarea.dispatchEvent(new Event("input", { bubbles: true }));
  textarea.focus();
}
