// A small PNG chunk reader: the size (IHDR) and the text chunks (tEXt, zTXt, iTXt), where picserve,
// like A1111, writes an image's generation `parameters`.

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

async function inflate(bytes) {
  // zTXt and compressed iTXt hold zlib streams ("deflate" in the Compression Streams API)
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function nul(bytes, from) {
  const at = bytes.indexOf(0, from);
  return at < 0 ? bytes.length : at;
}

/** `{ width, height, text }` of a PNG (an ArrayBuffer or Uint8Array); `text` maps each text chunk's
 * keyword to its value. Throws on anything that is not a PNG. */
export async function readPng(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const result = { width: 0, height: 0, text: {} };
  let offset = 8;
  while (offset + 12 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const start = offset + 8;
    const end = start + length;
    if (end + 4 > bytes.length) break; // truncated: keep what was read
    const body = bytes.subarray(start, end);
    if (type === "IHDR") {
      result.width = view.getUint32(start);
      result.height = view.getUint32(start + 4);
    } else if (type === "tEXt") {
      const k = nul(body, 0);
      result.text[latin1.decode(body.subarray(0, k))] = latin1.decode(body.subarray(k + 1));
    } else if (type === "zTXt") {
      const k = nul(body, 0);
      result.text[latin1.decode(body.subarray(0, k))] = latin1.decode(await inflate(body.subarray(k + 2)));
    } else if (type === "iTXt") {
      const k = nul(body, 0);
      const compressed = body[k + 1] === 1;
      const language = nul(body, k + 3);
      const translated = nul(body, language + 1);
      const value = body.subarray(translated + 1);
      result.text[latin1.decode(body.subarray(0, k))] = utf8.decode(compressed ? await inflate(value) : value);
    } else if (type === "IEND") {
      break;
    }
    offset = end + 4; // past the CRC
  }
  return result;
}

/** A1111's `parameters` text → `{ prompt, negativePrompt, fields }`: the prompt lines, the
 * `Negative prompt:` lines, and the last line's `Key: value` pairs (quoted values kept whole). */
export function parseInfotext(text) {
  const lines = String(text || "").split("\n");
  // the fields line is the last, and A1111 always writes Steps in it
  const last = /(?:^|, )Steps: /.test(lines[lines.length - 1]) ? lines.pop() : "";
  const prompt = [];
  const negative = [];
  let inNegative = false;
  for (const line of lines) {
    if (line.startsWith("Negative prompt:")) {
      inNegative = true;
      negative.push(line.slice("Negative prompt:".length).trim());
    } else (inNegative ? negative : prompt).push(line);
  }
  return { prompt: prompt.join("\n"), negativePrompt: negative.join("\n"), fields: parseFields(last) };
}

/** `Steps: 6, Sampler: Euler a, LoRA: a:0.5, b:1, Original prompt: 'x, y'` → an object. A value runs
 * to the next `, Key: ` (so `LoRA: a:0.5, b:1` stays whole); a quoted value to its closing quote. */
function parseFields(line) {
  const fields = {};
  const key = /\s*(\w[\w \-/]*): /y;
  let at = 0;
  while (at < line.length) {
    key.lastIndex = at;
    const found = key.exec(line);
    if (!found) break;
    at = key.lastIndex;
    let value;
    const quoted = /^("(?:\\.|[^\\"])*"|'(?:\\.|[^\\'])*')(?=,|$)/.exec(line.slice(at));
    if (quoted) {
      value = quoted[1];
      at += value.length;
    } else {
      const next = /, \w[\w \-/]*: /g;
      next.lastIndex = at;
      const boundary = next.exec(line);
      const stop = boundary ? boundary.index : line.length;
      value = line.slice(at, stop);
      at = stop;
    }
    fields[found[1]] = value.trim();
    if (line[at] === ",") at += 1;
  }
  return fields;
}
