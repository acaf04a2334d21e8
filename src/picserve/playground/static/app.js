// The playground: the form, the key, the models, and errors shown by the field they name.

import { ApiError, Client, SIGNERS, hasWebCrypto } from "./api.js";
import { MaskPainter } from "./canvas.js";
import { Controls } from "./control.js";
import { $, FieldError, announce, clamp, clearErrorsIn, clearFieldError, dropTarget, h, imageSize, readFile } from "./dom.js";
import { Tasks } from "./gallery.js";
import { SAMPLERS, SIZES } from "./options.js";
import { extractNetworks, insertWord, renderHighlight } from "./prompt.js";
import { sha1Hex } from "./sha1.js";
import { TOOLKIT_KINDS, Toolkit } from "./toolkit.js";
import { Tools } from "./tools.js";

const KEYS = "picserve.playground.keys";

const state = {
  client: null,
  models: null,
  /** chosen LoRAs and hypernetworks: [{ kind, code, weight }] */
  subModels: [],
  /** the init image: { dataUrl, width, height, name } */
  init: null,
  lastSeed: null,
  connecting: null,
};

let painter;
let tasks;
let tools;
let toolkit;
let controls;

/** Smooth scrolling, unless the user asked for less motion. */
function motion() {
  return window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth";
}

// ---------------------------------------------------------------- errors by field

/** An API Message's field path → the id of the control it is about. */
function controlFor(path, context) {
  const rules = [
    [/^PublicKey/, "public-key"],
    [/^Signature/, "private-key"],
    [/^MainModel\.InferenceParams\.Steps/, "steps"],
    [/^MainModel\.InferenceParams\.CFGScale/, "cfg"],
    [/^MainModel\.InferenceParams\.Sampler/, "sampler"],
    [/^MainModel\.InferenceParams\.ClipSkip/, "clip-skip"],
    [/^MainModel/, "model"],
    [/^PositivePrompts/, "prompt"],
    [/^NegativePrompts/, "negative-prompt"],
    [/^Seed/, "seed"],
    [/^Width/, "width"],
    [/^Height/, "height"],
    [/^BatchSize/, "batch"],
    [/^HiresFix\.Upscaler/, "hires-upscaler"],
    [/^HiresFix\.Steps/, "hires-steps"],
    [/^HiresFix\.DenoisingStrength/, "hires-denoise"],
    [/^HiresFix\.FirstPass/, "hires-first-width"],
    [/^HiresFix/, "hires"],
    [/^FaceRestore\.RestoreStrength/, "face-strength"],
    [/^FaceRestore\.FaceModel/, $("face-model-field").hidden ? "face-restore" : "face-model"],
    [/^FaceRestore\.FaceDetectModel/, $("face-detect-model-field").hidden ? "face-restore" : "face-detect-model"],
    [/^FaceRestore/, "face-restore"],
    [/^Outpaint/, "outpaint"],
    [/^Masked\.OnlyMaskedPadding/, "masked-padding"],
    [/^Masked\.MaskIndex|^Mask\b|^Masked/, context.hasMask ? "mask-canvas" : "init-image"],
    [/^RawImage/, "init-image"],
    [/^Image2Image\.ReferStrength/, "refer-strength"],
    [/^Image2Image\.ResizeMode/, "resize-mode"],
    [/^Image2Image\.MaskIndex|^ImageAndMaskList\[1\]/, context.hasMask ? "mask-canvas" : "init-image"],
    [/^Image2Image|^ImageAndMaskList/, "init-image"],
  ];
  // an ImageAndMaskList entry: the control it came from (the init image, its mask, a unit's image or mask)
  const entry = /^ImageAndMaskList\[(\d+)\]/.exec(path);
  if (entry && context.owners?.[entry[1]]) return context.owners[entry[1]];
  const unit = controls.controlFor(path, context.unitKeys);
  if (unit) return unit;
  const sub = /^SubModelList\[(\d+)\](.*)$/.exec(path);
  if (sub) {
    const row = context.subModels[Number(sub[1])];
    if (!row || row.fromPrompt) return "prompt";
    return /LoraWeight/.test(sub[2]) ? `weight-${row.kind}-${row.code}` : `remove-${row.kind}-${row.code}`;
  }
  return rules.find(([pattern]) => pattern.test(path))?.[1] || null;
}

function errorElementFor(id) {
  if (id === "mask-canvas") return $("mask-error");
  if (id.startsWith("hires-first")) return $("hires-first-error");
  if (id.startsWith("weight-") || id.startsWith("remove-")) return $("sub-models-error");
  return $(`${id}-error`);
}

function clearErrors() {
  clearErrorsIn(document, "form-error");
}

function clearError(control) {
  clearFieldError(control, (c) => errorElementFor(c.id));
}

/** Show `message` by the control `id` (aria-invalid, described by its error), and move focus there;
 * without such a control, in `fallback` (by default the line under Generate). */
function showFieldError(id, message, fallback = $("form-error")) {
  const control = $(id);
  const error = control && errorElementFor(id);
  if (!control || !error) {
    fallback.textContent = message;
    return;
  }
  error.textContent = message;
  error.hidden = false;
  control.setAttribute("aria-invalid", "true");
  const described = new Set((control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean));
  if (!described.has(error.id)) control.setAttribute("aria-describedby", [...described, error.id].join(" "));
  const details = control.closest("details");
  if (details) details.open = true;
  if (id === "mask-canvas" || id === "init-image") $("i2i").open = true;
  control.focus({ preventScroll: true });
  control.scrollIntoView({ block: "center", behavior: motion() });
}

/** An API refusal shown where it belongs: by the field its Message names, else under Generate.
 * `context.controlFor(path)` maps a field to a control for other requests than a generation's (the
 * tools'), `context.fallback` is where a message without a control goes. */
function showApiError(error, context = { subModels: [], hasMask: false }) {
  const fallback = context.fallback || $("form-error");
  if (!(error instanceof ApiError)) {
    fallback.textContent = String(error.message || error);
    return;
  }
  let id = null;
  if (error.retCode === 171) id = "public-key";
  else if (error.retCode === 170) id = "private-key";
  else if (error.field) id = context.controlFor ? context.controlFor(error.field) : controlFor(error.field, context);
  if (id) showFieldError(id, error.retCode === 170 ? `${error.message} (is this the private key of this public key?)` : error.message, fallback);
  else fallback.textContent = `${error.message}${error.retCode > 0 ? ` (RetCode ${error.retCode})` : ""}`;
}

// ---------------------------------------------------------------- keys and connection

function ownerOf(publicKey) {
  // the gallery is per key; a digest, so that without "remember" not even the public key is stored
  return sha1Hex(`picserve-playground:${publicKey}`).slice(0, 16);
}

function saveKeys() {
  if ($("remember").checked) {
    localStorage.setItem(KEYS, JSON.stringify({ publicKey: $("public-key").value, privateKey: $("private-key").value }));
  } else localStorage.removeItem(KEYS);
}

function showSigner(client) {
  const js = client.signer === SIGNERS.js;
  document.documentElement.dataset.signer = js ? "js" : "webcrypto";
  $("signer").textContent = js
    ? `Signing: ${SIGNERS.js} (no WebCrypto here: ${window.isSecureContext ? "unavailable" : "this page is not a secure context"})`
    : `Signing: ${SIGNERS.webcrypto}`;
}

async function connect() {
  if (state.connecting) return state.connecting;
  state.connecting = (async () => {
    const publicKey = $("public-key").value.trim();
    const privateKey = $("private-key").value.trim();
    if (!publicKey || !privateKey) {
      if (!publicKey) showFieldError("public-key", "PublicKey: enter your public key (picserve keys create makes one)");
      else showFieldError("private-key", "Enter the private key that goes with this public key");
      return false;
    }
    const client = new Client({ publicKey, privateKey });
    $("connection").textContent = "Connecting…";
    try {
      const models = await client.listModels();
      showSigner(client);
      state.client = client;
      clearError($("public-key"));
      clearError($("private-key"));
      fillModels(models);
      tools.setModels(models);
      toolkit.setModels(models);
      await listControlNets(client);
      const count = Object.keys(models.MainModels || {}).length;
      $("connection").textContent = `Connected: ${count} model${count === 1 ? "" : "s"}.`;
      document.documentElement.dataset.connected = "true";
      saveKeys();
      tasks.setSession(client, ownerOf(publicKey));
      await refreshCredits();
      return true;
    } catch (error) {
      state.client = null;
      document.documentElement.dataset.connected = "false";
      $("connection").textContent = "";
      showApiError(error);
      return false;
    }
  })();
  try {
    return await state.connecting;
  } finally {
    state.connecting = null;
  }
}

/** ListControlNets into the Control section (a server without it still generates: the section says why). */
async function listControlNets(client) {
  try {
    controls.setListing(await client.listControlNets());
  } catch (error) {
    controls.setListing(null, `The control models could not be listed: ${error.message}`);
  }
}

async function refreshCredits() {
  if (!state.client) return;
  try {
    const balance = await state.client.getCreditBalance();
    const left = balance.TotalCredits - balance.UsedCredits;
    let text = `${left.toLocaleString()} credits left of ${balance.TotalCredits.toLocaleString()}`;
    if (balance.ExpireTimestamp) text += ` · key expires ${new Date(balance.ExpireTimestamp * 1000).toLocaleDateString()}`;
    $("credits").textContent = text;
    $("credits").dataset.left = String(left);
  } catch (error) {
    $("credits").textContent = `Credits unknown: ${error.message}`;
  }
}

// ---------------------------------------------------------------- models

function modelLabel(model) {
  return model.Name && model.Name !== model.ModelCode ? `${model.ModelCode} · ${model.Name}` : model.ModelCode;
}

/** The hires fix's upscalers: the latents, a Lanczos resample, and ListModels' UpscaleModels. */
function fillHiresUpscalers(models) {
  const select = $("hires-upscaler");
  const previous = select.value || "Latent";
  const upscalers = Object.values(models.UpscaleModels || {})
    .filter((m) => !m.Problem)
    .sort((a, b) => a.ModelCode.localeCompare(b.ModelCode));
  select.replaceChildren(
    h("option", { value: "Latent" }, "Latent"),
    h("option", { value: "Lanczos" }, "Lanczos"),
    ...upscalers.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))),
  );
  select.value = [...select.options].some((o) => o.value === previous) ? previous : "Latent";
}

function hiresToggled() {
  $("hires-options").hidden = !$("hires").checked;
  clearError($("hires"));
}

function fillModels(models) {
  state.models = models;
  fillHiresUpscalers(models);
  const select = $("model");
  const previous = select.value;
  const mains = Object.values(models.MainModels || {}).sort((a, b) => a.ModelCode.localeCompare(b.ModelCode));
  select.replaceChildren(...mains.map((m) => h("option", { value: m.ModelCode }, modelLabel(m))));
  if (!mains.length) select.append(h("option", { value: "" }, "No models installed on the server"));
  const keep = mains.some((m) => m.ModelCode === previous) ? previous : mains[0]?.ModelCode || "";
  select.value = keep;
  modelChanged({ applyDefaults: keep !== previous });
}

function currentModel() {
  return state.models?.MainModels?.[$("model").value] || null;
}

function modelChanged({ applyDefaults = true } = {}) {
  const model = currentModel();
  const info = $("model-info");
  if (!model) {
    info.textContent = "";
  } else {
    const p = model.InferenceParams || {};
    const parts = [`Base: ${model.BaseModel || "unknown"}`];
    if (model.Prediction) parts.push(`${model.Prediction}-prediction`);
    if (model.StorageDtype) parts.push(model.StorageDtype);
    if (model.Vae) parts.push(`VAE ${model.Vae}`);
    parts.push(`defaults: ${p.Steps} steps, ${p.Sampler}, CFG ${p.CFGScale}, clip skip ${p.ClipSkip}`);
    info.textContent = parts.join(" · ");
    if (applyDefaults) {
      if (p.Steps !== undefined) $("steps").value = p.Steps;
      if (p.CFGScale !== undefined) $("cfg").value = p.CFGScale;
      if (p.ClipSkip !== undefined) $("clip-skip").value = p.ClipSkip;
      if (p.Sampler && SAMPLERS.includes(p.Sampler)) $("sampler").value = p.Sampler;
    }
  }
  fillSubModelPickers();
  renderSubModels();
  highlightPrompts();
  controls.refresh();
}

function fits(sub) {
  const main = $("model").value;
  if (sub.Problem) return false;
  return !Array.isArray(sub.CompatibleMainModels) || sub.CompatibleMainModels.includes(main);
}

function fillPicker(select, entries, noun) {
  const sorted = Object.values(entries || {}).sort((a, b) => a.ModelCode.localeCompare(b.ModelCode));
  const options = sorted.map((m) => {
    const ok = fits(m);
    const why = m.Problem ? "unusable" : `${m.BaseModel || "other"}, does not fit this model`;
    return h("option", { value: m.ModelCode, disabled: !ok }, ok ? modelLabel(m) : `${modelLabel(m)} (${why})`);
  });
  const placeholder = h("option", { value: "" }, sorted.length ? `Choose a ${noun}…` : `No ${noun} installed`);
  select.replaceChildren(placeholder, ...options);
}

function fillSubModelPickers() {
  const m = state.models || {};
  fillPicker($("lora-pick"), m.LoraModels, "LoRA");
  fillPicker($("hypernetwork-pick"), m.HypernetworkModels, "hypernetwork");
  fillPicker($("embedding-pick"), m.EmbeddingModels, "embedding");
}

function subModelInfo(kind, code) {
  const table = kind === "lora" ? state.models?.LoraModels : state.models?.HypernetworkModels;
  return table?.[code] || null;
}

function addSubModel(kind, code, weight = null) {
  if (!code) return;
  const info = subModelInfo(kind, code);
  const fallback = info?.InferenceParams?.LoraWeight ?? 1;
  const existing = state.subModels.find((s) => s.kind === kind && s.code === code);
  if (existing) {
    if (weight !== null) existing.weight = weight;
  } else state.subModels.push({ kind, code, weight: weight ?? fallback });
  renderSubModels();
  highlightPrompts();
  $(kind === "lora" ? "lora-pick" : "hypernetwork-pick").value = "";
  const input = $(`weight-${kind}-${code}`);
  if (input) input.focus();
  announce(`${kind === "lora" ? "LoRA" : "Hypernetwork"} ${code} added.`);
}

function renderSubModels() {
  const list = $("sub-models");
  list.replaceChildren(
    ...state.subModels.map((sub) => {
      const info = subModelInfo(sub.kind, sub.code);
      const label = info ? modelLabel(info) : sub.code;
      const id = `weight-${sub.kind}-${sub.code}`;
      const number = h("input", {
        id,
        type: "number",
        min: "-1",
        max: "2",
        step: "0.05",
        value: String(sub.weight),
        inputmode: "decimal",
        "aria-describedby": "sub-models-error",
      });
      const range = h("input", { type: "range", min: "-1", max: "2", step: "0.05", value: String(sub.weight), "aria-label": `Weight slider of ${sub.code}` });
      number.addEventListener("input", () => {
        sub.weight = Number(number.value);
        range.value = number.value;
        clearError(number);
      });
      range.addEventListener("input", () => {
        sub.weight = Number(range.value);
        number.value = range.value;
      });
      const words = info?.TriggerWordList || [];
      const triggers = words.length
        ? h(
            "p",
            { class: "triggers" },
            h("span", { class: "hint" }, "Trigger words: "),
            ...words.map((word) =>
              h(
                "button",
                { type: "button", class: "chip", title: "Add to the prompt", onclick: () => insertWord($("prompt"), word) },
                word,
              ),
            ),
          )
        : null;
      const remove = h(
        "button",
        {
          type: "button",
          id: `remove-${sub.kind}-${sub.code}`,
          class: "icon small",
          "aria-label": `Remove ${sub.code}`,
          title: "Remove",
          onclick: () => {
            state.subModels = state.subModels.filter((s) => s !== sub);
            renderSubModels();
            highlightPrompts();
          },
        },
        "✕",
      );
      const fitsNow = info ? fits(info) : false;
      return h(
        "li",
        { class: `sub-model${fitsNow ? "" : " misfit"}`, dataset: { kind: sub.kind, code: sub.code } },
        h("div", { class: "row between" }, h("span", { class: "sub-name" }, h("span", { class: "badge" }, sub.kind === "lora" ? "LoRA" : "Hypernet"), ` ${label}`), remove),
        h("div", { class: "row tight" }, h("label", { for: id }, `Weight of ${sub.code}`), range, number),
        fitsNow ? null : h("p", { class: "hint warning" }, info ? "Does not fit the chosen model." : "Not on this server."),
        triggers,
      );
    }),
  );
}

// ---------------------------------------------------------------- prompts

function highlightPrompts() {
  const embeddings = Object.keys(state.models?.EmbeddingModels || {});
  const triggers = state.subModels.flatMap((s) => subModelInfo(s.kind, s.code)?.TriggerWordList || []);
  for (const id of ["prompt", "negative-prompt"]) {
    renderHighlight($(`${id}-mirror`), $(id).value, { embeddings, triggers });
    $(`${id}-mirror`).scrollTop = $(id).scrollTop;
  }
}

// ---------------------------------------------------------------- sizes

function fillSizes() {
  const select = $("size-preset");
  select.replaceChildren(
    h("option", { value: "" }, "Custom"),
    ...SIZES.map(([w, h_, ratio]) => h("option", { value: `${w}x${h_}` }, `${w} × ${h_} (${ratio})`)),
  );
  syncPreset();
}

function syncPreset() {
  const value = `${$("width").value}x${$("height").value}`;
  $("size-preset").value = SIZES.some(([w, h_]) => `${w}x${h_}` === value) ? value : "";
}

function setSize(width, height) {
  $("width").value = width;
  $("height").value = height;
  clearError($("width"));
  clearError($("height"));
  syncPreset();
}

// ---------------------------------------------------------------- the init image and its mask

async function setInitImage(file) {
  clearError($("init-image"));
  if (!file || !/^image\//.test(file.type)) {
    showFieldError("init-image", `${file ? file.name : "That"} is not an image (PNG, JPEG or WebP)`);
    return;
  }
  try {
    const dataUrl = await readFile(file);
    const { width, height } = await imageSize(dataUrl);
    state.init = { dataUrl, width, height, name: file.name };
    $("init-preview").src = dataUrl;
    $("init-name").textContent = `Using ${file.name}, ${width} × ${height}.`;
    $("canvas-wrap").style.setProperty("--ratio", String(width / height));
    $("i2i-options").hidden = false;
    $("i2i").open = true;
    painter.reset(width, height);
    const size = clamp(Math.round(Math.min(width, height) / 8), 1, 256);
    $("brush-size").value = size;
    brushSizeChanged();
    // the output takes the image's size (within the API's limits, keeping its shape)
    const scale = Math.min(1, 2560 / Math.max(width, height));
    setSize(clamp(Math.round(width * scale), 64, 2560), clamp(Math.round(height * scale), 64, 2560));
    announce(`Init image ${file.name}, ${width} × ${height}; the output size is set to match.`);
  } catch (error) {
    showFieldError("init-image", `${file.name}: ${error.message}`);
  }
}

function removeInitImage() {
  state.init = null;
  $("init-image").value = "";
  $("init-preview").removeAttribute("src");
  $("init-name").textContent = "";
  $("i2i-options").hidden = true;
  $("inpaint").checked = false;
  inpaintToggled();
  announce("Init image removed.");
}

function inpaintToggled() {
  const on = $("inpaint").checked && state.init !== null;
  $("mask-canvas").hidden = !on;
  $("mask-tools").hidden = !on;
  $("canvas-wrap").classList.toggle("painting", on);
}

function brushSizeChanged() {
  painter.brushSize = Number($("brush-size").value);
  $("brush-size-value").textContent = $("brush-size").value;
}

function toolChanged() {
  painter.mode = $("tool-eraser").checked ? "eraser" : "brush";
  $("mask-canvas").dataset.tool = painter.mode;
}

async function useAsInput(url, name) {
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    await setInitImage(new File([blob], name, { type: blob.type || "image/png" }));
    $("i2i").scrollIntoView({ block: "start", behavior: motion() });
  } catch (error) {
    $("form-error").textContent = `Could not load that image: ${error.message}`;
  }
}

// ---------------------------------------------------------------- the request

/** A number field's value as typed: whether it is in range (or whole) is the server's to say. */
function number(id, label) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value)) throw new FieldError(id, `${label}: enter a number`);
  return value;
}

/** The form as it is (for "reuse these settings"; no image bytes). */
function snapshot() {
  return {
    model: $("model").value,
    prompt: $("prompt").value,
    negativePrompt: $("negative-prompt").value,
    subModels: state.subModels.map((s) => ({ ...s })),
    sampler: $("sampler").value,
    steps: $("steps").value,
    cfg: $("cfg").value,
    clipSkip: $("clip-skip").value,
    width: $("width").value,
    height: $("height").value,
    batch: $("batch").value,
    seed: $("seed").value,
    translate: $("translate").checked,
    tiling: $("tiling").checked,
    hires: $("hires").checked
      ? {
          upscaler: $("hires-upscaler").value,
          steps: $("hires-steps").value,
          denoise: $("hires-denoise").value,
          firstWidth: $("hires-first-width").value,
          firstHeight: $("hires-first-height").value,
        }
      : null,
    referStrength: $("refer-strength").value,
    resizeMode: $("resize-mode").value,
    faceRestore: toolkit.snapshot(),
    image: state.init ? state.init.name : null,
    control: controls.snapshot(),
    // what the task's control maps are (ImgList after the images): the gallery captions them
    controlMaps: controls.maps(),
  };
}

/** The MainModel field: `model` with the form's sampling settings. */
function mainModel(model) {
  return {
    ModelCode: model,
    InferenceParams: {
      Steps: number("steps", "Steps"),
      Sampler: $("sampler").value,
      CFGScale: number("cfg", "CFG scale"),
      ClipSkip: number("clip-skip", "Clip skip"),
    },
  };
}

/** GenerateImagesSDXL's parameters from the form, and what the error mapping needs to know. */
function buildRequest() {
  const model = $("model").value;
  if (!model) throw new FieldError("model", "MainModel: choose a model (connect first to list them)");
  const { text: prompt, networks } = extractNetworks($("prompt").value);
  if (!prompt.trim()) throw new FieldError("prompt", "PositivePrompts: describe the image to make");
  const subModels = state.subModels.map((s) => ({ ...s }));
  for (const net of networks) {
    if (subModels.some((s) => s.code === net.code)) continue; // the picker's weight wins
    const weight = net.weight ?? subModelInfo(net.kind, net.code)?.InferenceParams?.LoraWeight ?? 1;
    subModels.push({ kind: net.kind, code: net.code, weight, fromPrompt: true });
  }
  const negative = $("negative-prompt").value.trim();
  const params = {
    MainModel: mainModel(model),
    PositivePrompts: prompt.trim() ? [prompt.trim()] : undefined,
    NegativePrompts: negative ? [negative] : undefined,
    SubModelList: subModels.length
      ? subModels.map((s) => ({ ModelCode: s.code, InferenceParams: { LoraWeight: s.weight } }))
      : undefined,
    TranslatePrompts: $("translate").checked,
    Seed: $("seed").value.trim() === "" ? -1 : number("seed", "Seed"),
    Width: number("width", "Width"),
    Height: number("height", "Height"),
    BatchSize: number("batch", "Batch size"),
    Tiling: $("tiling").checked,
  };
  let hasMask = false;
  // ImageAndMaskList: the init image and its mask first, then the control units' images and masks;
  // owners[i]: the control entry i came from (a refusal naming it is shown there)
  const images = [];
  const owners = {};
  if (state.init) {
    images.push(state.init.dataUrl);
    owners[0] = "init-image";
    if ($("inpaint").checked) {
      const mask = painter.toDataURL();
      if (!mask) throw new FieldError("mask-canvas", "Paint the part of the image to repaint, or untick “Paint a mask”");
      images.push(mask); // the entry after the image is its mask (ImageIndex + 1)
      owners[1] = "mask-canvas";
      hasMask = true;
    }
    params.Image2Image = {
      ImageIndex: 0,
      ReferStrength: number("refer-strength", "Refer strength"),
      ResizeMode: $("resize-mode").value,
    };
  }
  const control = controls.build(images, owners);
  if (control) {
    params.ControlNetList = control.units;
    if (control.returnMaps) params.ReturnControlMaps = true;
    // with units the mask is named: the entry after the image is taken as its mask only when no unit uses it
    if (hasMask) params.Image2Image.MaskIndex = 1;
  }
  if ($("hires").checked) {
    if (state.init) throw new FieldError("hires", "Hires fix applies to text to image only: untick it, or remove the init image");
    params.HiresFix = hiresFix();
  }
  if (images.length) params.ImageAndMaskList = images;
  const faceRestore = toolkit.faceRestore();
  if (faceRestore) params.FaceRestore = faceRestore;
  const context = { subModels, hasMask, owners, unitKeys: control?.keys || [] };
  const margins = state.init ? outpaintMargins() : null;
  const onlyMasked = hasMask && $("only-masked").checked;
  if (!onlyMasked && !margins) return { action: "GenerateImagesSDXL", params, context };
  if (faceRestore) throw new FieldError("face-restore", "Restore faces does not go with only masked or outpainting: untick it");
  // only-masked inpainting and outpainting are ModifyMaskedPixels'
  if (control) throw new FieldError(margins ? "outpaint" : "masked-padding", "Only masked and outpainting do not take Control units: remove them");
  const masked = { ImageIndex: 0 };
  if (hasMask) masked.MaskIndex = 1;
  if (onlyMasked) {
    masked.InpaintArea = "OnlyMasked";
    masked.OnlyMaskedPadding = number("masked-padding", "Padding");
  }
  const edit = { ...params, Masked: masked, Image2Image: { ImageIndex: 0, ReferStrength: params.Image2Image.ReferStrength } };
  if (margins) edit.Outpaint = margins;
  // the result is the image's size plus the margins (the server's default)
  for (const name of ["Width", "Height", "Tiling"]) delete edit[name];
  return { action: "ModifyMaskedPixels", params: edit, context };
}

/** The form's base generation fields for another generation (GenerateBackgrounds): the main model and
 * its sampling settings, the negative prompt, the seed, the batch size, whether prompts are translated. */
function generationBase() {
  const model = $("model").value;
  if (!model) throw new FieldError("model", "MainModel: choose a model (connect first to list them)");
  const negative = $("negative-prompt").value.trim();
  return {
    MainModel: mainModel(model),
    NegativePrompts: negative ? [negative] : undefined,
    TranslatePrompts: $("translate").checked,
    Seed: $("seed").value.trim() === "" ? -1 : number("seed", "Seed"),
    BatchSize: number("batch", "Batch size"),
  };
}

/** GenerateImagesSDXL's HiresFix from its fields (a first pass left blank: the server's default). */
function hiresFix() {
  const fix = {
    Upscaler: $("hires-upscaler").value || "Latent",
    Steps: number("hires-steps", "Hires steps"),
    DenoisingStrength: number("hires-denoise", "Denoising strength"),
  };
  for (const [id, key] of [
    ["hires-first-width", "FirstPassWidth"],
    ["hires-first-height", "FirstPassHeight"],
  ]) {
    const raw = $(id).value.trim();
    if (raw === "") continue;
    const value = Number(raw);
    if (!Number.isFinite(value)) throw new FieldError("hires-first-width", "First pass: enter a number, or leave it blank");
    fix[key] = value;
  }
  return fix;
}

/** The Outpaint margins, or null when none is given. */
function outpaintMargins() {
  const margins = {};
  for (const side of ["Left", "Top", "Right", "Bottom"]) {
    const raw = $(`outpaint-${side.toLowerCase()}`).value.trim();
    const value = raw === "" ? 0 : Number(raw);
    if (!Number.isFinite(value)) throw new FieldError("outpaint", `Outpaint ${side}: enter a number of px`);
    margins[side] = value;
  }
  return Object.values(margins).some((v) => v !== 0) ? margins : null;
}

/** "Erase": RemoveContents of the init image with the painted mask (white: erased). */
async function eraseMasked() {
  clearErrors();
  if (!state.client && !(await connect())) return;
  if (!state.init) return showFieldError("init-image", "Choose an image to erase from");
  const mask = painter.toDataURL();
  if (!mask) return showFieldError("mask-canvas", "Paint over what to erase");
  const button = $("mask-erase");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const params = { RawImage: state.init.dataUrl, Mask: mask };
    // no eraser on the server (ListModels' InpaintModels): an SDXL inpainting pass with the chosen model
    const erasers = Object.values(state.models?.InpaintModels || {}).filter((m) => !m.Problem);
    const model = erasers.length ? null : $("model").value;
    if (model) params.MainModel = { ModelCode: model };
    const uid = await state.client.removeContents(params);
    showSigner(state.client);
    tasks.add(uid, { tool: "erase", source: state.init.name, model: model || undefined });
    announce(`Task ${uid} submitted: an erase.`);
  } catch (error) {
    showApiError(error, { subModels: [], hasMask: true, owners: { 0: "init-image" } });
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

async function generate() {
  if ($("generate").disabled) return; // a submit is under way (Ctrl+Enter pressed twice)
  clearErrors();
  if (!state.client && !(await connect())) return;
  let request;
  try {
    request = buildRequest();
  } catch (error) {
    if (error instanceof FieldError) showFieldError(error.id, error.message);
    else $("form-error").textContent = error.message;
    return;
  }
  const button = $("generate");
  button.setAttribute("aria-busy", "true");
  button.disabled = true;
  try {
    const form = snapshot();
    const uid =
      request.action === "ModifyMaskedPixels"
        ? await state.client.modifyMaskedPixels(request.params)
        : await state.client.generate(request.params);
    showSigner(state.client);
    tasks.add(uid, form);
    announce(`Task ${uid} submitted.`);
  } catch (error) {
    showApiError(error, request.context);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/** "Reuse these settings": the form as it was for that task, with that image's seed. */
function reuse(form, seed) {
  clearErrors();
  if (form.model && [...$("model").options].some((o) => o.value === form.model)) {
    $("model").value = form.model;
    modelChanged({ applyDefaults: false });
  }
  $("prompt").value = form.prompt ?? "";
  $("negative-prompt").value = form.negativePrompt ?? "";
  state.subModels = (form.subModels || []).filter((s) => !s.fromPrompt).map((s) => ({ kind: s.kind, code: s.code, weight: s.weight }));
  $("sampler").value = form.sampler || "Euler";
  for (const [id, key] of [
    ["steps", "steps"],
    ["cfg", "cfg"],
    ["clip-skip", "clipSkip"],
    ["batch", "batch"],
    ["refer-strength", "referStrength"],
  ]) {
    if (form[key] !== undefined) $(id).value = form[key];
  }
  setSize(form.width, form.height);
  $("seed").value = seed ?? form.seed ?? -1;
  $("translate").checked = form.translate !== false;
  $("tiling").checked = Boolean(form.tiling);
  $("hires").checked = Boolean(form.hires);
  if (form.hires) {
    if ([...$("hires-upscaler").options].some((o) => o.value === form.hires.upscaler)) $("hires-upscaler").value = form.hires.upscaler;
    $("hires-steps").value = form.hires.steps;
    $("hires-denoise").value = form.hires.denoise;
    $("hires-first-width").value = form.hires.firstWidth;
    $("hires-first-height").value = form.hires.firstHeight;
  }
  hiresToggled();
  if (form.resizeMode) $("resize-mode").value = form.resizeMode;
  toolkit.restore(form.faceRestore || null);
  renderSubModels();
  highlightPrompts();
  const lost = controls.restore(form.control);
  $("prompt").focus();
  $("prompt").scrollIntoView({ block: "center", behavior: motion() });
  const image = form.image ? ` The init image (${form.image}) is not kept: choose it again for image to image.` : "";
  const units = lost ? ` ${lost} control image${lost === 1 ? " is" : "s are"} not kept: choose ${lost === 1 ? "it" : "them"} again.` : "";
  announce(`Settings restored${seed !== undefined ? `, seed ${seed}` : ""}.${image}${units}`);
}

function settled(entry) {
  // an upscale or a cut-out has no seed of its own
  if (entry.status === "Finished" && entry.images.length && !entry.form?.tool) state.lastSeed = entry.images[0].seed;
  // a description this page asked for, finished: its text is the prompt now
  if (entry.form?.tool === "describe" && toolkit.awaited(entry.uid) && entry.status === "Finished" && entry.texts?.length) {
    usePrompt(entry.texts.join("\n"));
  }
  refreshCredits();
}

/** `text` as the prompt (a description's), replacing what was there. */
function usePrompt(text) {
  $("prompt").value = text;
  clearError($("prompt"));
  highlightPrompts();
  announce("The description is now the prompt.");
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      if (tools.owns(event.target) || toolkit.owns(event.target)) return; // the tools panels have their own buttons
      event.preventDefault();
      generate();
      return;
    }
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName) && event.target.type !== "range";
    if (typing || $("mask-tools").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    const size = $("brush-size");
    if (event.key === "b") $("tool-brush").click();
    else if (event.key === "e") $("tool-eraser").click();
    else if (event.key === "[" || event.key === "]") {
      const step = Math.max(1, Math.round(Number(size.value) * 0.15));
      size.value = clamp(Number(size.value) + (event.key === "]" ? step : -step), 1, 256);
      brushSizeChanged();
    }
  });
  $("connect").addEventListener("click", () => connect());
  for (const id of ["public-key", "private-key"]) {
    $(id).addEventListener("change", () => {
      if ($("public-key").value.trim() && $("private-key").value.trim()) connect();
    });
  }
  $("remember").addEventListener("change", saveKeys);
  $("model").addEventListener("change", () => modelChanged({ applyDefaults: true }));
  $("lora-add").addEventListener("click", () => addSubModel("lora", $("lora-pick").value));
  $("hypernetwork-add").addEventListener("click", () => addSubModel("hypernetwork", $("hypernetwork-pick").value));
  $("embedding-positive").addEventListener("click", () => $("embedding-pick").value && insertWord($("prompt"), $("embedding-pick").value));
  $("embedding-negative").addEventListener("click", () => $("embedding-pick").value && insertWord($("negative-prompt"), $("embedding-pick").value));
  for (const id of ["prompt", "negative-prompt"]) {
    $(id).addEventListener("input", highlightPrompts);
    $(id).addEventListener("scroll", () => {
      $(`${id}-mirror`).scrollTop = $(id).scrollTop;
    });
  }
  $("size-preset").addEventListener("change", () => {
    const value = $("size-preset").value;
    if (value) setSize(...value.split("x").map(Number));
  });
  for (const id of ["width", "height"]) $(id).addEventListener("input", syncPreset);
  $("swap-size").addEventListener("click", () => setSize($("height").value, $("width").value));
  $("seed-random").addEventListener("click", () => {
    $("seed").value = -1;
    clearError($("seed"));
  });
  $("seed-reuse").addEventListener("click", () => {
    if (state.lastSeed === null) {
      announce("No image yet: its seed can be reused once one is made.");
      return;
    }
    $("seed").value = state.lastSeed;
    clearError($("seed"));
    announce(`Seed ${state.lastSeed}.`);
  });
  // a field's error goes once the field is changed
  $("form").addEventListener("input", (event) => clearError(event.target));
  $("form").addEventListener("change", (event) => clearError(event.target));

  // the init image: chosen, dropped anywhere on the form, or pasted
  $("init-image").addEventListener("change", () => setInitImage($("init-image").files[0]));
  $("init-remove").addEventListener("click", removeInitImage);
  // (a control unit takes what is dropped on it: dropTarget's innermost target wins)
  dropTarget($("form"), $("drop-zone"), (files) => setInitImage(files[0]));
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    event.preventDefault();
    // pasted into a tools panel: its image(s); into a control unit: its image; anywhere else: the init image
    if (tools.owns(event.target)) tools.setFiles(files);
    else if (toolkit.owns(event.target)) toolkit.setFile(files[0]);
    else if (!(controls.owns(event.target) && controls.paste(event.target, files[0]))) setInitImage(files[0]);
  });
  painter = new MaskPainter($("mask-canvas"), { onChange: () => clearError($("mask-canvas")) });
  $("inpaint").addEventListener("change", inpaintToggled);
  $("brush-size").addEventListener("input", brushSizeChanged);
  $("tool-brush").addEventListener("change", toolChanged);
  $("tool-eraser").addEventListener("change", toolChanged);
  $("mask-invert").addEventListener("click", () => painter.invert());
  $("mask-clear").addEventListener("click", () => painter.clear());
  $("mask-erase").addEventListener("click", eraseMasked);
  $("hires").addEventListener("change", hiresToggled);
}

/** The Generate bar leaves room for itself: on wide screens it sits below the scrolling settings
 * (style.css), lined up with them (`--settings-gutter`: their scrollbar's width); on narrow ones it
 * sticks to the window's bottom, and `--actions-height` keeps a field scrolled into view above it. */
function watchActionsBar() {
  const root = document.documentElement;
  const measure = () => {
    const settings = $("settings");
    root.style.setProperty("--actions-height", `${Math.ceil($("actions").getBoundingClientRect().height)}px`);
    root.style.setProperty("--settings-gutter", `${Math.max(0, settings.offsetWidth - settings.clientWidth)}px`);
  };
  new ResizeObserver(measure).observe($("actions"));
  new ResizeObserver(measure).observe($("settings"));
  measure();
}

function start() {
  $("sampler").replaceChildren(...SAMPLERS.map((s) => h("option", { value: s }, s)));
  fillSizes();
  controls = new Controls({ mainModel: () => $("model").value, showFieldError: (id, message) => showFieldError(id, message), clearError });
  wire();
  tasks = new Tasks({
    onReuse: reuse,
    onUseAsInput: useAsInput,
    onUseAsControl: (source) => controls.fromGallery(source),
    onSettled: settled,
    onTool: (kind, source) => (TOOLKIT_KINDS.has(kind) ? toolkit : tools).fromGallery(kind, source),
    onUsePrompt: (text) => {
      usePrompt(text);
      $("prompt").focus({ preventScroll: true });
      $("prompt").scrollIntoView({ block: "center", behavior: motion() });
    },
  });
  tools = new Tools({
    client: () => state.client,
    connect,
    tasks,
    showError: showApiError,
    showFieldError: (id, message) => showFieldError(id, message, $("tools-error")),
  });
  toolkit = new Toolkit({
    client: () => state.client,
    connect,
    tasks,
    showError: showApiError,
    showFieldError: (id, message) => showFieldError(id, message, $("toolkit-error")),
    generation: generationBase,
    formControlFor: (path) => controlFor(path, { subModels: [], hasMask: false, unitKeys: [] }),
  });
  watchActionsBar();
  highlightPrompts();
  if (!hasWebCrypto()) {
    $("signer").textContent = `Signing: ${SIGNERS.js} (no WebCrypto: this page is not a secure context)`;
  }
  let remembered = null;
  try {
    remembered = JSON.parse(localStorage.getItem(KEYS) || "null");
  } catch {
    remembered = null;
  }
  if (remembered?.publicKey && remembered?.privateKey) {
    $("public-key").value = remembered.publicKey;
    $("private-key").value = remembered.privateKey;
    $("remember").checked = true;
    connect();
  }
  document.documentElement.dataset.ready = "true";
}

start();
