// ControlNet units and reference images: GenerateImagesSDXL's `ControlNetList` (a picserve extension, PICPIK's
// GenerateImages units). Up to 3 units, each an image of `ImageAndMaskList` that steers the generation: a
// ControlNet (or a ControlNet-Union) follows the map a preprocessor makes of it (edges, depth, …); an
// IP-Adapter (ListControlNets' `Type: "IPAdapter"`) takes it as a reference image, as it is. What a unit
// may name comes from ListControlNets; its images go after the img2img image and mask in the request.

import { $, FieldError, announce, dropTarget, h, readImage } from "./dom.js";

/** ControlNetList's limit, and so the section's */
export const MAX_UNITS = 3;

/** A control model's InferenceParams when ListControlNets gives none (PICPIK's example, §6.2). */
const CONTROL_DEFAULTS = { ControlWeight: 1, StartingStep: 0, EndingStep: 1, ControlMode: "Balanced", ResizeMode: "ResizeAndFill" };

export const CONTROL_MODES = [
  ["Balanced", "Balanced"],
  ["PromptMoreImportant", "My prompt is more important"],
  ["ControlNetMoreImportant", "ControlNet is more important"],
];
const RESIZE_MODES = [
  ["ResizeAndFill", "Resize and fill"],
  ["CropAndResize", "Crop and resize"],
  ["JustResize", "Just resize"],
];

/** The preprocessor parameters the page knows (A1111's ranges): label, min, max, step. Another key a
 * preprocessor lists gets a plain number field named after it. */
const PARAMS = {
  CannyLowThreshold: ["Canny low threshold", 1, 255, 1],
  CannyHighThreshold: ["Canny high threshold", 1, 255, 1],
  Resolution: ["Resolution", 64, 2048, 1],
  XDoGThreshold: ["XDoG threshold", 1, 64, 1],
  GammaCorrection: ["Gamma correction", 0.1, 2, 0.05],
  DownSamplingRate: ["Down-sampling rate", 1, 8, 0.1],
  RemoveNearPercent: ["Near removal %", 0, 100, 1],
  RemoveBackgroundPercent: ["Far removal %", 0, 100, 1],
  MLSDValueThreshold: ["MLSD value threshold", 0.01, 2, 0.01],
  MLSDDistanceThreshold: ["MLSD distance threshold", 0.01, 20, 0.01],
  Seed: ["Shuffle seed", -1, 2147483647, 1],
};

function paramLabel(key) {
  return PARAMS[key]?.[0] || key.replace(/([a-z])([A-Z])/g, "$1 $2");
}

/** "reference" (an IP-Adapter: its image is an image prompt), "union" (a ControlNet-Union) or "controlnet". */
export function kindOf(model) {
  if (model?.Type === "IPAdapter") return "reference";
  return model?.Type === "ControlNetUnion" ? "union" : "controlnet";
}

const KIND_LABELS = { controlnet: "ControlNet", union: "ControlNet-Union", reference: "Reference" };

/** Why `model` cannot steer main model `main` (null: it can). */
function misfit(model, main) {
  if (!model) return "not on this server";
  if (model.Problem) return `unusable: ${model.Problem}`;
  if (Array.isArray(model.CompatibleMainModels) && !model.CompatibleMainModels.includes(main)) {
    return `${model.BaseModel || "another base model"}, does not fit this model`;
  }
  return null;
}

function modelLabel(model) {
  const name = model.Name && model.Name !== model.ModelCode ? `${model.ModelCode} · ${model.Name}` : model.ModelCode;
  const kind = kindOf(model);
  return kind === "reference" ? `${name} (reference)` : kind === "union" ? `${name} (Union)` : name;
}

function preLabel(pre) {
  if (pre.ModelCode === "none") return "none · the image is the control map";
  return pre.Name && pre.Name !== pre.ModelCode ? `${pre.ModelCode} · ${pre.Name}` : pre.ModelCode;
}

/** A number field's value as typed (whether it is in range is the server's to say). */
function number(id, label) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value)) throw new FieldError(id, `${label}: enter a number`);
  return value;
}

export class Controls {
  /**
   * `mainModel()`: the chosen main model's ModelCode; `showFieldError(id, message)` and `clearError(control)`:
   * app.js's, which show (and take away) a message by its control.
   */
  constructor({ mainModel, showFieldError, clearError }) {
    this.mainModel = mainModel;
    this.showFieldError = showFieldError;
    this.clearError = clearError;
    /** ListControlNets' reply (null before connecting, or when it failed: `problem` says why) */
    this.listing = null;
    this.problem = "";
    /** [{ key, image, mask, invert, model, pre, preParams, weight, start, end, mode, resize, type, touched, element, refs }];
     * an image or mask is { data (what is sent: a data URI or task:<TaskUID>/<i>), src, name, width, height } */
    this.units = [];
    this.nextKey = 1;
    this.wire();
    this.sync();
  }

  /** Whether `target` is in the section (a paste there goes to its units). */
  owns(target) {
    return target instanceof Node && $("control").contains(target);
  }

  // ------------------------------------------------------------ what the server has

  /** ListControlNets' reply (null and why, where it could not be had). */
  setListing(listing, problem = "") {
    this.listing = listing;
    this.problem = problem;
    this.refresh();
  }

  /** The main model (or the listing) changed: what fits is shown again. */
  refresh() {
    for (const unit of this.units) this.renderUnit(unit);
    this.sync();
  }

  models() {
    return Object.values(this.listing?.ControlModels || {}).sort((a, b) => a.ModelCode.localeCompare(b.ModelCode));
  }

  model(code) {
    return this.listing?.ControlModels?.[code] || null;
  }

  preprocessor(code) {
    return this.listing?.PreProcessors?.[code] || null;
  }

  fitting(reference) {
    const main = this.mainModel();
    return this.models().filter((m) => (kindOf(m) === "reference") === reference && !misfit(m, main));
  }

  /** A new unit's ControlNet: the first that fits, of the kind (Union or plain) the other units use. */
  defaultControl() {
    const fitting = this.fitting(false);
    const used = this.units.map((u) => this.model(u.model)).find((m) => m && kindOf(m) !== "reference");
    return (fitting.find((m) => used && kindOf(m) === kindOf(used)) || fitting[0])?.ModelCode || "";
  }

  /** The reference shortcut's IP-Adapter: the server's default (IsDefault), else the first that fits. */
  defaultReference() {
    const fitting = this.fitting(true);
    return (fitting.find((m) => m.IsDefault) || fitting[0])?.ModelCode || "";
  }

  // ------------------------------------------------------------ units

  /** A new unit with control model `code` (or the settings `saved` of one, from "Reuse settings"). */
  add(code, saved = null) {
    if (this.units.length >= MAX_UNITS) return null;
    const unit = {
      key: this.nextKey++,
      image: null,
      mask: null,
      invert: false,
      model: "",
      pre: "none",
      preParams: {},
      weight: "1",
      start: "0",
      end: "1",
      mode: "Balanced",
      resize: "ResizeAndFill",
      type: "",
      touched: new Set(),
    };
    this.units.push(unit);
    unit.element = this.unitElement(unit);
    $("control-units").append(unit.element);
    if (saved) {
      for (const key of ["model", "pre", "weight", "start", "end", "mode", "resize", "type"]) {
        if (saved[key] !== undefined && saved[key] !== null) unit[key] = String(saved[key]);
      }
      unit.preParams = { ...(saved.preParams || {}) };
      unit.invert = Boolean(saved.invert);
      // an uploaded file is not kept (no image bytes in storage); a gallery image is, by its TaskUID
      unit.image = saved.image?.data ? { ...saved.image } : null;
      unit.mask = saved.mask?.data ? { ...saved.mask } : null;
      unit.touched = new Set(["weight", "start", "end", "mode", "resize"]);
      this.renderUnit(unit);
    } else this.setModel(unit, code);
    this.renumber();
    this.sync();
    $("control").open = true;
    return unit;
  }

  remove(unit) {
    const at = this.units.indexOf(unit);
    this.units = this.units.filter((u) => u !== unit);
    unit.element.remove();
    this.renumber();
    this.sync();
    const next = this.units[at] || this.units[at - 1];
    (next ? next.refs.remove : $("control-add")).focus();
    announce(`Unit ${at + 1} removed; ${this.units.length} left.`);
  }

  /** The units' numbers follow their order (a removed unit's followers move up). */
  renumber() {
    this.units.forEach((unit, i) => {
      unit.refs.legend.textContent = `Unit ${i + 1}`;
      unit.refs.remove.setAttribute("aria-label", `Remove unit ${i + 1}`);
      unit.element.dataset.index = String(i);
    });
  }

  /** A unit's control model: its defaults fill the fields the user has not changed, its first
   * preprocessor is chosen (an IP-Adapter has none), a Union's type is kept. */
  setModel(unit, code) {
    unit.model = code;
    const model = this.model(code);
    const defaults = { ...CONTROL_DEFAULTS, ...(model?.InferenceParams || {}) };
    const fields = { weight: "ControlWeight", start: "StartingStep", end: "EndingStep", mode: "ControlMode", resize: "ResizeMode" };
    for (const [field, key] of Object.entries(fields)) {
      if (!unit.touched.has(field) && defaults[key] !== undefined && defaults[key] !== null) unit[field] = String(defaults[key]);
    }
    const pairs = (model?.PreProcessors || []).filter((c) => this.preprocessor(c));
    this.setPreprocessor(unit, kindOf(model) === "reference" ? "none" : pairs[0] || "none");
    if (kindOf(model) !== "union") unit.type = "";
    this.renderUnit(unit);
  }

  /** A unit's preprocessor and its parameters: the values typed for the same keys, else its defaults. */
  setPreprocessor(unit, code) {
    unit.pre = code;
    const params = {};
    for (const [key, value] of Object.entries(this.preprocessor(code)?.InferenceParams || {})) {
      params[key] = unit.preParams[key] ?? String(value);
    }
    unit.preParams = params;
  }

  unitElement(unit) {
    const id = (name) => `unit-${unit.key}-${name}`;
    const error = (name) => h("p", { class: "field-error", id: id(`${name}-error`), hidden: true });
    const refs = {};
    unit.refs = refs;

    refs.legend = h("legend", {}, "Unit");
    refs.badge = h("span", { class: "badge" });
    refs.remove = h("button", { type: "button", class: "icon small", title: "Remove this unit", onclick: () => this.remove(unit) }, "✕");

    // its image: chosen, dropped anywhere on the unit, or pasted
    refs.imageLabel = h("label", { for: id("image") }, "Control image");
    refs.image = h("input", {
      id: id("image"),
      type: "file",
      accept: "image/png,image/jpeg,image/webp",
      "aria-describedby": `${id("image-hint")} ${id("image-error")}`,
    });
    refs.image.addEventListener("change", () => refs.image.files[0] && this.setImage(unit, refs.image.files[0]));
    refs.preview = h("img", { alt: "", hidden: true });
    refs.imageName = h("p", { class: "status", id: id("image-name") });
    refs.imageHint = h("p", { class: "hint", id: id("image-hint") });
    const imageZone = h(
      "div",
      { class: "drop unit-drop" },
      h("div", { class: "unit-thumb" }, refs.preview),
      h("div", { class: "unit-file" }, refs.imageLabel, refs.image, refs.imageHint, refs.imageName, error("image")),
    );

    refs.warning = h("p", { class: "hint warning", hidden: true });
    refs.model = h("select", { id: id("model"), "aria-describedby": `${id("model-hint")} ${id("model-error")}` });
    refs.model.addEventListener("change", () => {
      this.setModel(unit, refs.model.value);
      this.sync();
    });
    refs.modelHint = h("p", { class: "hint", id: id("model-hint") });
    const modelField = h("div", { class: "field" }, h("label", { for: id("model") }, "Control model"), refs.model, refs.modelHint, error("model"));

    refs.pre = h("select", { id: id("pre"), "aria-describedby": id("pre-error") });
    refs.pre.addEventListener("change", () => {
      this.setPreprocessor(unit, refs.pre.value);
      this.renderUnit(unit);
    });
    refs.preField = h("div", { class: "field" }, h("label", { for: id("pre") }, "Preprocessor"), refs.pre, error("pre"));
    refs.params = h("div", { class: "row three unit-params", role: "group", "aria-label": "Preprocessor parameters" });

    refs.type = h("select", { id: id("type"), "aria-describedby": `${id("type-hint")} ${id("type-error")}` });
    refs.type.addEventListener("change", () => {
      unit.type = refs.type.value;
    });
    refs.typeField = h(
      "div",
      { class: "field" },
      h("label", { for: id("type") }, "Control type"),
      refs.type,
      h("p", { class: "hint", id: id("type-hint") }, "What the Union model reads the map as."),
      error("type"),
    );

    // the weight: a slider and a number, as a LoRA's
    refs.weight = h("input", { id: id("weight"), type: "number", min: "0", max: "2", step: "0.05", inputmode: "decimal", "aria-describedby": id("weight-error") });
    refs.weightRange = h("input", { type: "range", min: "0", max: "2", step: "0.05", "aria-label": "Control weight slider" });
    refs.weight.addEventListener("input", () => {
      unit.weight = refs.weight.value;
      unit.touched.add("weight");
      refs.weightRange.value = refs.weight.value;
    });
    refs.weightRange.addEventListener("input", () => {
      unit.weight = refs.weightRange.value;
      unit.touched.add("weight");
      refs.weight.value = refs.weightRange.value;
      this.clearError(refs.weight);
    });
    const weightField = h(
      "div",
      { class: "field" },
      h("div", { class: "row tight unit-weight" }, h("label", { for: id("weight") }, "Control weight"), refs.weightRange, refs.weight),
      error("weight"),
    );

    const numberField = (name, label, hint) => {
      refs[name] = h("input", { id: id(name), type: "number", min: "0", max: "1", step: "0.05", inputmode: "decimal", "aria-describedby": `${id("range-hint")} ${id(`${name}-error`)}` });
      refs[name].addEventListener("input", () => {
        unit[name] = refs[name].value;
        unit.touched.add(name);
      });
      return h("div", { class: "field" }, h("label", { for: id(name) }, label), refs[name], hint, error(name));
    };
    const range = h(
      "div",
      { class: "row two" },
      numberField("start", "Starting step"),
      numberField("end", "Ending step"),
    );
    const rangeHint = h("p", { class: "hint unit-range-hint", id: id("range-hint") }, "The part of the steps the unit acts in: 0 is the first step, 1 the last.");

    const select = (name, label, options) => {
      refs[name] = h("select", { id: id(name), "aria-describedby": id(`${name}-error`) }, ...options.map(([value, text]) => h("option", { value }, text)));
      refs[name].addEventListener("change", () => {
        unit[name] = refs[name].value;
        unit.touched.add(name);
      });
      return h("div", { class: "field" }, h("label", { for: id(name) }, label), refs[name], error(name));
    };
    refs.modes = h("div", { class: "row two unit-modes" }, select("mode", "Control mode", CONTROL_MODES), select("resize", "Map resize mode", RESIZE_MODES));

    // an optional mask: where the unit acts (white), or where it does not (inverted)
    refs.mask = h("input", { id: id("mask"), type: "file", accept: "image/png,image/jpeg,image/webp", "aria-describedby": `${id("mask-hint")} ${id("mask-error")}` });
    refs.mask.addEventListener("change", () => refs.mask.files[0] && this.setImage(unit, refs.mask.files[0], "mask"));
    refs.maskPreview = h("img", { alt: "", hidden: true });
    refs.maskName = h("p", { class: "status" });
    refs.invert = h("input", { type: "checkbox", id: id("invert") });
    refs.invert.addEventListener("change", () => {
      unit.invert = refs.invert.checked;
    });
    refs.maskRemove = h("button", { type: "button", class: "secondary small", hidden: true, onclick: () => this.clearImage(unit, "mask") }, "Remove mask");
    refs.maskZone = h(
      "div",
      { class: "drop unit-drop unit-mask" },
      h("div", { class: "unit-thumb" }, refs.maskPreview),
      h(
        "div",
        { class: "unit-file" },
        h("label", { for: id("mask") }, "Mask (optional)"),
        refs.mask,
        h("p", { class: "hint", id: id("mask-hint") }, "White: where the unit acts (grey: partly). Without a mask it acts everywhere."),
        refs.maskName,
        h("div", { class: "row wrap" }, h("label", { class: "check" }, refs.invert, "Invert the mask"), refs.maskRemove),
        error("mask"),
      ),
    );

    const element = h(
      "li",
      { class: "control-unit", dataset: { key: String(unit.key) } },
      h(
        "fieldset",
        { class: "tools unit" },
        refs.legend,
        h("div", { class: "row between unit-head" }, refs.badge, refs.remove),
        imageZone,
        refs.warning,
        modelField,
        refs.preField,
        refs.params,
        refs.typeField,
        weightField,
        range,
        rangeHint,
        refs.modes,
        refs.maskZone,
      ),
    );
    dropTarget(refs.maskZone, refs.maskZone, (files) => this.setImage(unit, files[0], "mask"));
    dropTarget(element, imageZone, (files) => this.setImage(unit, files[0]));
    return element;
  }

  /** The unit's fields from its state and what the server lists. */
  renderUnit(unit) {
    const { refs } = unit;
    const id = (name) => `unit-${unit.key}-${name}`;
    const main = this.mainModel();
    const model = this.model(unit.model);
    const kind = model ? kindOf(model) : "controlnet";
    const reference = kind === "reference";
    unit.element.dataset.kind = kind;
    unit.element.dataset.model = unit.model;
    refs.badge.textContent = KIND_LABELS[kind];

    // the control models: those that do not fit the main model listed, but disabled, with the reason
    const models = this.models();
    const option = (m) => {
      const why = misfit(m, main);
      return h("option", { value: m.ModelCode, disabled: Boolean(why) }, why ? `${modelLabel(m)} (${why})` : modelLabel(m));
    };
    const groups = [
      ["ControlNets", models.filter((m) => kindOf(m) !== "reference")],
      ["Reference image (IP-Adapter)", models.filter((m) => kindOf(m) === "reference")],
    ].filter(([, list]) => list.length);
    const placeholder = h(
      "option",
      { value: "" },
      this.listing ? (models.length ? "Choose a control model…" : "No control model on this server") : "Connect to list the control models",
    );
    const missing = unit.model && !model ? [h("option", { value: unit.model, disabled: true }, `${unit.model} (not on this server)`)] : [];
    refs.model.replaceChildren(placeholder, ...missing, ...groups.map(([label, list]) => h("optgroup", { label }, ...list.map(option))));
    refs.model.value = unit.model;
    const why = unit.model ? misfit(model, main) : null;
    refs.warning.hidden = !why;
    refs.warning.textContent = why ? `${unit.model} cannot be used with this main model: ${why}.` : "";
    unit.element.classList.toggle("misfit", Boolean(why));
    refs.modelHint.textContent = !model
      ? ""
      : reference
        ? `An IP-Adapter: the image is a reference (an image prompt) whose content and style guide the generation${model.ImageEncoder ? `; image encoder ${model.ImageEncoder}` : ""}.`
        : `${KIND_LABELS[kind]} · ${model.BaseModel || "base unknown"}`;

    // the preprocessors: the model's own first (ListControlNets' pairs), then the others
    const pres = Object.values(this.listing?.PreProcessors || {});
    const pairs = (model?.PreProcessors || []).filter((c) => this.preprocessor(c));
    const preOptions = (list) => list.map((p) => h("option", { value: p.ModelCode }, preLabel(p)));
    const rest = pres.filter((p) => !pairs.includes(p.ModelCode));
    const preGroups = pairs.length
      ? [
          h("optgroup", { label: `For ${unit.model}` }, ...preOptions(pairs.map((c) => this.preprocessor(c)))),
          rest.length ? h("optgroup", { label: "Other preprocessors" }, ...preOptions(rest)) : null,
        ]
      : preOptions(pres);
    const unknownPre = unit.pre && !this.preprocessor(unit.pre) && unit.pre !== "none";
    refs.pre.replaceChildren(
      ...(unknownPre ? [h("option", { value: unit.pre, disabled: true }, `${unit.pre} (not on this server)`)] : []),
      ...(pres.length ? [] : [h("option", { value: "none" }, preLabel({ ModelCode: "none" }))]),
      ...preGroups.filter(Boolean),
    );
    refs.pre.value = unit.pre;
    refs.preField.hidden = reference;

    // the preprocessor's parameters, where it has any
    refs.params.replaceChildren(
      ...Object.entries(unit.preParams).map(([key, value]) => {
        const [, min, max, step] = PARAMS[key] || [key, null, null, "any"];
        const input = h("input", {
          id: id(`pre-${key}`),
          type: "number",
          value: String(value),
          step: String(step),
          inputmode: "decimal",
          "aria-describedby": id(`pre-${key}-error`),
        });
        if (min !== null) input.min = String(min);
        if (max !== null) input.max = String(max);
        input.addEventListener("input", () => {
          unit.preParams[key] = input.value;
        });
        return h(
          "div",
          { class: "field" },
          h("label", { for: input.id }, paramLabel(key)),
          input,
          h("p", { class: "field-error", id: id(`pre-${key}-error`), hidden: true }),
        );
      }),
    );
    refs.params.hidden = reference || !Object.keys(unit.preParams).length;

    // a Union's control type: the preprocessor's unless chosen
    const made = this.preprocessor(unit.pre)?.ControlType;
    refs.type.replaceChildren(
      h("option", { value: "" }, made ? `From the preprocessor (${made})` : "Choose a control type…"),
      ...(model?.ControlTypes || []).map((t) => h("option", { value: t }, t)),
    );
    refs.type.value = unit.type;
    refs.typeField.hidden = kind !== "union";

    refs.weight.value = unit.weight;
    refs.weightRange.value = unit.weight;
    refs.start.value = unit.start;
    refs.end.value = unit.end;
    refs.mode.value = unit.mode;
    refs.resize.value = unit.resize;
    refs.modes.hidden = reference;
    refs.invert.checked = unit.invert;
    refs.maskZone.hidden = false; // a reference's mask limits where it acts, as a ControlNet unit's
    refs.imageLabel.textContent = reference ? "Reference image" : "Control image";
    refs.imageHint.textContent = reference
      ? "Choose, drop or paste the image whose look the generation should take."
      : "Choose, drop or paste the image the preprocessor makes the control map of (or the map itself).";
    this.renderImages(unit);
  }

  renderImages(unit) {
    const { refs } = unit;
    for (const [which, preview, name] of [
      ["image", refs.preview, refs.imageName],
      ["mask", refs.maskPreview, refs.maskName],
    ]) {
      const entry = unit[which];
      if (entry) {
        preview.src = entry.src;
        preview.alt = `${which === "mask" ? "Mask" : "Image"} of the unit: ${entry.name}`;
        preview.hidden = false;
        name.textContent = entry.width ? `${entry.name}, ${entry.width} × ${entry.height}` : entry.name;
      } else {
        preview.removeAttribute("src");
        preview.hidden = true;
        name.textContent = "";
      }
    }
    refs.maskRemove.hidden = !unit.mask;
    unit.element.dataset.image = unit.image ? "true" : "false";
  }

  /** A unit's image (or mask) from a file: PNG, JPEG or WebP, sent as a data URI. */
  async setImage(unit, file, which = "image") {
    const input = which === "mask" ? unit.refs.mask : unit.refs.image;
    this.clearError(input);
    try {
      const { dataUrl, ...read } = await readImage(file);
      unit[which] = { data: dataUrl, src: dataUrl, ...read };
    } catch (error) {
      input.value = "";
      this.showFieldError(input.id, error.message);
      return;
    }
    this.renderImages(unit);
    announce(`${which === "mask" ? "Mask" : "Image"} of unit ${this.units.indexOf(unit) + 1}: ${file.name}.`);
  }

  clearImage(unit, which) {
    unit[which] = null;
    (which === "mask" ? unit.refs.mask : unit.refs.image).value = "";
    if (which === "mask") unit.invert = false;
    unit.refs.invert.checked = unit.invert;
    this.renderImages(unit);
    (which === "mask" ? unit.refs.mask : unit.refs.image).focus();
  }

  /** The reference shortcut: a unit with the default IP-Adapter, for `file` (or the one chosen next). */
  async reference(file = null) {
    const code = this.defaultReference();
    if (!code) {
      this.showFieldError("control-reference", "No IP-Adapter on this server fits this model: its operator adds one to models/ipadapter");
      return null;
    }
    const unit = this.add(code);
    if (!unit) return null;
    if (file) await this.setImage(unit, file);
    else unit.refs.image.click(); // the file chooser, at once
    announce(`Unit ${this.units.length} added: a reference image for ${code}.`);
    return unit;
  }

  /** A gallery image as a unit's image, named by its TaskUID (nothing is uploaded again). A control map
   * comes back ready-made: its unit's model again, without a preprocessor. */
  fromGallery({ ref, url, name, map }) {
    const fits = map?.model && this.fitting(false).some((m) => m.ModelCode === map.model);
    if (this.units.length >= MAX_UNITS) {
      this.showFieldError("control-add", `Already ${MAX_UNITS} units: remove one to use this image`);
      return null;
    }
    const unit = this.add(fits ? map.model : this.defaultControl());
    if (!unit) return null;
    if (map) {
      this.setPreprocessor(unit, "none");
      if (kindOf(this.model(unit.model)) === "union" && map.type) unit.type = map.type;
    }
    unit.image = { data: ref, src: url, name };
    this.renderUnit(unit);
    unit.element.scrollIntoView({ block: "nearest" });
    unit.refs.model.focus({ preventScroll: true });
    announce(`Unit ${this.units.length} added with ${name}${map ? ", a control map (no preprocessor)" : ""}.`);
    return unit;
  }

  /** A paste into the section: the image of the unit it is in (or its mask), or a reference image. */
  paste(target, file) {
    if (target === $("control-reference")) {
      this.reference(file);
      return true;
    }
    const unit = this.units.find((u) => u.element.contains(target));
    if (!unit) return false;
    this.setImage(unit, file, unit.refs.maskZone.contains(target) ? "mask" : "image");
    return true;
  }

  /** The add buttons, the count and the section's hints. */
  sync() {
    const full = this.units.length >= MAX_UNITS;
    const controls = this.fitting(false);
    const reference = this.defaultReference();
    $("control-add").disabled = full || !controls.length;
    $("control-reference").disabled = full || !reference;
    const count = $("control-count");
    count.textContent = this.units.length ? `${this.units.length} unit${this.units.length === 1 ? "" : "s"}` : "";
    count.hidden = !this.units.length;
    let status = "";
    if (!this.listing) status = this.problem || "Connect to list the control models (ListControlNets).";
    else if (!this.models().length) status = "No control model on this server: its operator adds ControlNets to models/controlnet and IP-Adapters to models/ipadapter.";
    else if (!controls.length) status = "No ControlNet on this server fits this model.";
    else if (full) status = `${MAX_UNITS} units: the most one request takes.`;
    $("control-status").textContent = status;
    $("control-status").classList.toggle("warning", Boolean(this.problem));
    $("control-reference-hint").textContent = !this.listing
      ? "One click adds a unit with the default IP-Adapter for the image you choose or drop here."
      : reference
        ? `One click adds a unit with ${reference}, the default IP-Adapter, for the image you choose or drop here.`
        : "No IP-Adapter on this server fits this model (an operator adds one to models/ipadapter).";
    const kinds = new Set(this.units.map((u) => this.model(u.model)).filter((m) => m && kindOf(m) !== "reference").map(kindOf));
    $("control-mixed").hidden = kinds.size < 2;
  }

  // ------------------------------------------------------------ the request

  /** The units as ControlNetList entries, their images appended to `images` (ImageAndMaskList so far: the
   * img2img image and its mask); `owners[i]` becomes the control an entry came from. Null without units. */
  build(images, owners) {
    if (!this.units.length) return null;
    const main = this.mainModel();
    const entries = [];
    const kinds = new Set();
    const index = (entry, control) => {
      let at = images.indexOf(entry.data); // units may share an entry
      if (at < 0) {
        at = images.push(entry.data) - 1;
        owners[at] = control;
      }
      return at;
    };
    this.units.forEach((unit, n) => {
      const id = (name) => `unit-${unit.key}-${name}`;
      const label = `Unit ${n + 1}`;
      const model = this.model(unit.model);
      if (!unit.model) throw new FieldError(id("model"), `${label}: choose a control model (or remove the unit)`);
      const why = misfit(model, main);
      if (why) throw new FieldError(id("model"), `${label}: ${unit.model} cannot be used with this main model (${why})`);
      const kind = kindOf(model);
      if (!unit.image) {
        throw new FieldError(id("image"), `${label}: choose its ${kind === "reference" ? "reference" : "control"} image (or remove the unit)`);
      }
      if (kind !== "reference") {
        kinds.add(kind);
        if (kinds.size > 1) {
          throw new FieldError(id("model"), `${label}: ControlNet-Union models and plain ControlNets cannot be used in one request; use one kind for every unit`);
        }
      }
      const params = {
        ControlWeight: number(id("weight"), `${label}: Control weight`),
        StartingStep: number(id("start"), `${label}: Starting step`),
        EndingStep: number(id("end"), `${label}: Ending step`),
      };
      if (kind !== "reference") {
        params.ControlMode = unit.mode;
        params.ResizeMode = unit.resize;
      }
      if (kind === "union") {
        if (unit.type) params.ControlType = unit.type;
        else if (!this.preprocessor(unit.pre)?.ControlType) {
          throw new FieldError(id("type"), `${label}: choose the control type (the preprocessor ${unit.pre} makes no map a Union model knows the type of)`);
        }
      }
      const entry = { ImageIndex: index(unit.image, id("image")) };
      if (unit.mask) {
        entry.MaskIndex = index(unit.mask, id("mask"));
        entry.InvertMask = unit.invert;
      }
      if (kind !== "reference" && unit.pre && unit.pre !== "none") {
        const pre = { ModelCode: unit.pre };
        const values = {};
        for (const key of Object.keys(unit.preParams)) values[key] = number(id(`pre-${key}`), `${label}: ${paramLabel(key)}`);
        if (Object.keys(values).length) pre.InferenceParams = values;
        entry.PreProcessor = pre;
      }
      entry.ControlModel = { ModelCode: unit.model, InferenceParams: params };
      entries.push(entry);
    });
    return { units: entries, returnMaps: $("control-maps").checked, keys: this.units.map((u) => u.key) };
  }

  /** An API Message's field (ControlNetList[1].ControlModel.InferenceParams.ControlWeight) → the control
   * of the unit it names; `keys`: the units' keys in the request's order. */
  controlFor(path, keys = []) {
    if (/^ReturnControlMaps/.test(path)) return "control-maps";
    const match = /^ControlNetList(?:\[(\d+)\])?(.*)$/.exec(path);
    if (!match) return null;
    const key = keys[Number(match[1] ?? 0)];
    if (key === undefined) return null;
    const rest = match[2];
    const id = (name) => `unit-${key}-${name}`;
    const param = /^\.PreProcessor\.InferenceParams\.(\w+)/.exec(rest);
    if (param) return $(id(`pre-${param[1]}`)) ? id(`pre-${param[1]}`) : id("pre");
    const rules = [
      [/^\.ImageIndex/, "image"],
      [/^\.(MaskIndex|InvertMask)/, "mask"],
      [/^\.PreProcessor/, "pre"],
      [/\.ControlWeight/, "weight"],
      [/\.StartingStep/, "start"],
      [/\.EndingStep/, "end"],
      [/\.ControlMode/, "mode"],
      [/\.ResizeMode/, "resize"],
      [/\.ControlType/, "type"],
    ];
    return id(rules.find(([pattern]) => pattern.test(rest))?.[1] || "model");
  }

  /** The control maps a task will return, in order (ReturnControlMaps): one per ControlNet unit that runs
   * (weight above 0, a step range that is not empty; an IP-Adapter makes none). */
  maps() {
    if (!$("control-maps").checked) return [];
    return this.units.flatMap((unit, n) => {
      const model = this.model(unit.model);
      if (!model || kindOf(model) === "reference") return [];
      if (!(Number(unit.weight) > 0) || !(Number(unit.start) < Number(unit.end))) return [];
      const type = kindOf(model) === "union" ? unit.type || this.preprocessor(unit.pre)?.ControlType || null : null;
      return [{ unit: n + 1, model: unit.model, pre: unit.pre, type }];
    });
  }

  // ------------------------------------------------------------ "Reuse settings"

  /** The units' settings (for "Reuse settings"): no image bytes, only gallery images' TaskUIDs. */
  snapshot() {
    const keep = (entry) => (!entry ? null : entry.data.startsWith("task:") ? { ...entry } : { name: entry.name });
    return {
      maps: $("control-maps").checked,
      units: this.units.map((u) => ({
        model: u.model,
        pre: u.pre,
        preParams: { ...u.preParams },
        weight: u.weight,
        start: u.start,
        end: u.end,
        mode: u.mode,
        resize: u.resize,
        type: u.type,
        invert: u.invert,
        image: keep(u.image),
        mask: keep(u.mask),
      })),
    };
  }

  /** The units of a snapshot, instead of the present ones; how many of their images must be chosen again. */
  restore(saved) {
    for (const unit of this.units) unit.element.remove();
    this.units = [];
    $("control-maps").checked = Boolean(saved?.maps);
    let lost = 0;
    for (const settings of saved?.units || []) {
      this.add(settings.model, settings);
      lost += Number(Boolean(settings.image && !settings.image.data)) + Number(Boolean(settings.mask && !settings.mask.data));
    }
    this.sync();
    return lost;
  }

  wire() {
    $("control-add").addEventListener("click", () => {
      const unit = this.add(this.defaultControl());
      if (!unit) return;
      unit.refs.image.focus();
      announce(`Unit ${this.units.length} added: ${unit.model}.`);
    });
    $("control-reference").addEventListener("click", () => this.reference());
    dropTarget($("control-reference"), $("control-reference"), (files) => this.reference(files[0]));
  }
}
