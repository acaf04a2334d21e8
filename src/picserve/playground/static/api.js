// The PICPIK wire protocol in the browser: the signature (spec section 2, the same rules and test
// vectors as picserve/protocol/signature.py) and one signed POST per call.

import { hex, sha1Hex } from "./sha1.js";

/** Whether this page can use WebCrypto (secure contexts only: https, or http on localhost). */
export function hasWebCrypto() {
  return Boolean(globalThis.isSecureContext && globalThis.crypto && globalThis.crypto.subtle);
}

// Python sorts str keys by code point; JavaScript's default sort compares UTF-16 code units.
function byCodePoint(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

/** A number as the server re-formats it after decoding the JSON: integral values as integers, others in
 * plain decimal, never in exponent form (1e-7 → "0.0000001"). */
export function encodeNumber(value) {
  if (!Number.isFinite(value)) throw new Error(`${value} cannot be signed: JSON has no NaN or Infinity`);
  if (Number.isInteger(value)) return BigInt(value).toString(); // 1e21 → "1000000000000000000000", -0 → "0"
  const text = String(value); // the shortest round-trip digits, as Python's repr
  const match = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!match) return text;
  const [, sign, whole, fraction = "", exponent] = match;
  const digits = whole + fraction;
  const point = whole.length + Number(exponent);
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + "0".repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** One parameter value as the signature string holds it (spec 2.2). */
export function encode(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return encodeNumber(value);
  if (Array.isArray(value)) return value.map(encode).join("");
  if (typeof value === "object") {
    return Object.keys(value)
      .sort(byCodePoint)
      .map((key) => key + encode(value[key]))
      .join("");
  }
  return String(value);
}

/** `key + encode(value)` for every parameter but Signature, keys sorted: what is hashed before the key. */
export function stringToSign(params) {
  return Object.keys(params)
    .filter((key) => key !== "Signature" && params[key] !== undefined)
    .sort(byCodePoint)
    .map((key) => key + encode(params[key]))
    .join("");
}

export const SIGNERS = { webcrypto: "WebCrypto", js: "built-in SHA-1" };

/** The request's signature, and which SHA-1 made it: WebCrypto where the page has it, else the
 * built-in one (`{ useWebCrypto: false }` forces the latter). */
export async function sign(params, privateKey, { useWebCrypto = hasWebCrypto() } = {}) {
  const text = stringToSign(params) + privateKey;
  if (useWebCrypto) {
    const digest = await globalThis.crypto.subtle.digest("SHA-1", new TextEncoder().encode(text));
    return { signature: hex(new Uint8Array(digest)), signer: SIGNERS.webcrypto };
  }
  return { signature: sha1Hex(text), signer: SIGNERS.js };
}

/** A random version-4 UUID (crypto.randomUUID is for secure contexts only; getRandomValues is not). */
export function uuid4() {
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = hex(b);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A refusal: the reply's RetCode and Message (RetCode -1: no PICPIK reply came back). */
export class ApiError extends Error {
  constructor(retCode, message, action) {
    super(message);
    this.name = "ApiError";
    this.retCode = retCode;
    this.action = action;
  }

  /** The field the message names first (`Width`, `MainModel.InferenceParams.Steps`,
   * `ImageAndMaskList[1]`, `SubModelList[0].ModelCode`), or "" when it names none. */
  get field() {
    const match = /^([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*)(?=[:\s])/.exec(this.message || "");
    if (!match) return "";
    const name = match[1];
    // "the request body …", "internal server error": prose, not a field
    return /^[A-Z]/.test(name) ? name : "";
  }
}

/** A PICPIK client for the endpoint (by default, the server this page came from). */
export class Client {
  constructor({ publicKey, privateKey, endpoint = new URL("../", document.baseURI).href, fetchImpl } = {}) {
    this.publicKey = publicKey;
    this.privateKey = privateKey;
    this.endpoint = endpoint;
    this.fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    /** which SHA-1 signed the last request (SIGNERS) */
    this.signer = "";
  }

  /** One signed call; resolves to the reply, rejects with an ApiError. A request lost in transit is
   * sent once more with the same request_uuid (picserve answers a resend with the first TaskUID). */
  async call(action, params = {}) {
    const body = { Action: action, PublicKey: this.publicKey, request_uuid: uuid4() };
    for (const [key, value] of Object.entries(params)) if (value !== undefined) body[key] = value;
    const { signature, signer } = await sign(body, this.privateKey);
    this.signer = signer;
    body.Signature = signature;
    const text = JSON.stringify(body);
    let response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await this.fetch(this.endpoint, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: text,
          cache: "no-store",
        });
        break;
      } catch (error) {
        if (attempt >= 1) throw new ApiError(-1, `the server could not be reached (${error.message})`, action);
        await new Promise((resolve) => setTimeout(resolve, 800));
      }
    }
    let reply;
    try {
      reply = await response.json();
    } catch {
      throw new ApiError(-1, `the server answered HTTP ${response.status} without a PICPIK reply`, action);
    }
    if (typeof reply.RetCode !== "number") {
      throw new ApiError(-1, `the server answered HTTP ${response.status} without a RetCode`, action);
    }
    if (reply.RetCode !== 0) throw new ApiError(reply.RetCode, reply.Message || `RetCode ${reply.RetCode}`, action);
    return reply;
  }

  listModels() {
    return this.call("ListModels");
  }

  /** ListControlNets: the preprocessors and control models (ControlNets, Unions, IP-Adapters). */
  listControlNets() {
    return this.call("ListControlNets");
  }

  getCreditBalance() {
    return this.call("GetCreditBalance");
  }

  async generate(params) {
    return (await this.call("GenerateImagesSDXL", params)).TaskUID;
  }

  /** ModifyMaskedPixels (inpainting, only-masked, outpainting): its TaskUID. */
  async modifyMaskedPixels(params) {
    return (await this.call("ModifyMaskedPixels", params)).TaskUID;
  }

  /** RemoveContents (the eraser): its TaskUID. */
  async removeContents(params) {
    return (await this.call("RemoveContents", params)).TaskUID;
  }

  /** ResizeImage (an upscale): `Image` is a base64 image, a data URI or `task:<TaskUID>/<index>`. */
  async resizeImage(params) {
    return (await this.call("ResizeImage", params)).TaskUID;
  }

  /** RemoveBackground (`RawImage`), or RemoveBackgroundsInBatch (`RawImages`) when given a list. */
  async removeBackground(params) {
    const action = Array.isArray(params.RawImages) ? "RemoveBackgroundsInBatch" : "RemoveBackground";
    return (await this.call(action, params)).TaskUID;
  }

  /** RestoreFaces: `RawImage` (base64, a data URI or `task:<TaskUID>/<index>`) with its faces restored. */
  async restoreFaces(params) {
    return (await this.call("RestoreFaces", params)).TaskUID;
  }

  /** ExtractContents: the object under `IncludePointList` cut out (or its mask). */
  async extractContents(params) {
    return (await this.call("ExtractContents", params)).TaskUID;
  }

  /** DescribeImages: one text per image of `ImageList`, in the task's `TxtList`. */
  async describeImages(params) {
    return (await this.call("DescribeImages", params)).TaskUID;
  }

  /** GenerateBackgrounds: a background painted around `TransparentForeground` (an RGBA image of `ImageList`). */
  async generateBackgrounds(params) {
    return (await this.call("GenerateBackgrounds", params)).TaskUID;
  }

  async listTasksDetails(uids) {
    return (await this.call("ListTasksDetails", { TaskUIDList: uids })).TaskDetailList;
  }

  cancelTask(uids) {
    return this.call("CancelTask", { TaskUIDList: uids });
  }
}
