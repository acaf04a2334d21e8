// This browser's tasks: kept in localStorage (TaskUIDs and the settings that made them, never image
// bytes), followed with ListTasksDetails while they run, shown as run cards, then in the gallery.
// Generations and the tools' tasks (an upscale, a cut-out, a face restoration, a cut-out by clicks, a
// description, a new background: `form.tool`) alike; every finished image can be worked on in turn,
// named by its TaskUID. A description has no image: its texts (TaskDetail.TxtList) are shown instead. A generation's control maps (ReturnControlMaps:
// ImgList's entries after its SeedList's images) are shown too, marked as such.

import { ApiError } from "./api.js";
import { announce, h } from "./dom.js";
import { parseInfotext, readPng } from "./png.js";

const STORE = "picserve.playground.tasks";
const KEEP = 200; // entries kept per browser; the oldest go first
const POLL_MS = 500;
const TERMINAL = new Set(["Finished", "Error", "Canceled", "Gone"]);

function load() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return [];
  }
}

function excerpt(text, limit = 80) {
  const flat = String(text || "").replace(/\s+/g, " ").trim();
  return flat.length > limit ? `${flat.slice(0, limit - 1)}…` : flat || "(no prompt)";
}

/** What a task makes, in a few words: a generation's prompt, or a tool and the image it works on. */
export function describe(form = {}, limit = 80) {
  if (form.tool === "upscale") {
    const how = form.scale ? `${form.scale}×` : `to ${form.width}×${form.height}`;
    return excerpt(`Upscale ${how}: ${form.source}`, limit);
  }
  if (form.tool === "cutout") return excerpt(`${form.onlyMask ? "Mask" : "Cut-out"}: ${form.source}`, limit);
  if (form.tool === "erase") return excerpt(`Erase: ${form.source}`, limit);
  if (form.tool === "faces") return excerpt(`Restore faces: ${form.source}`, limit);
  if (form.tool === "extract") return excerpt(`${form.onlyMask ? "Mask" : "Cut-out"} by clicks: ${form.source}`, limit);
  if (form.tool === "describe") return excerpt(`Describe: ${form.source}`, limit);
  if (form.tool === "background") return excerpt(`New background (${form.prompt}): ${form.source}`, limit);
  return excerpt(form.prompt, limit);
}

/** A tool's result under its image: "upscaled 2× · 2x-compact", "background removed · birefnet". */
function toolCaption(form) {
  if (form.tool === "erase") return form.model ? `erased · ${form.model}` : "erased";
  if (form.tool === "faces") return form.model ? `faces restored · ${form.model}` : "faces restored";
  if (form.tool === "background") return form.model ? `new background · ${form.model}` : "new background";
  if (form.tool === "describe") return form.model ? `described · ${form.model}` : "described";
  if (form.tool === "extract") {
    const points = `${form.include} + ${form.exclude ?? 0} points`;
    return `${form.onlyMask ? "mask" : "cut out"} by ${points}${form.model ? ` · ${form.model}` : ""}`;
  }
  const what =
    form.tool === "upscale"
      ? form.scale
        ? `upscaled ${form.scale}×`
        : `resized to ${form.width}×${form.height}`
      : form.onlyMask
        ? "mask"
        : "background removed";
  return form.model ? `${what} · ${form.model}` : what;
}

/** A result image, fetched once: a blob URL for the page, its size and text chunks. */
const results = new Map();
function loadResult(url) {
  if (!results.has(url)) {
    results.set(
      url,
      (async () => {
        let response;
        try {
          response = await fetch(url, { cache: "force-cache" });
        } catch {
          return { src: url, png: null, error: "" }; // another origin without CORS: shown, not read
        }
        if (!response.ok) return { src: null, png: null, error: response.status === 404 ? "expired" : `HTTP ${response.status}` };
        const bytes = await response.arrayBuffer();
        // IHDR's colour type (byte 25): 4 grey and alpha, 6 RGBA: a result with transparency (a cut-out)
        const head = new Uint8Array(bytes, 0, Math.min(26, bytes.byteLength));
        const alpha = head.length === 26 && (head[25] === 4 || head[25] === 6);
        let png = null;
        try {
          png = await readPng(bytes);
        } catch {
          png = null;
        }
        return { src: URL.createObjectURL(new Blob([bytes], { type: "image/png" })), png, alpha, error: "" };
      })(),
    );
  }
  return results.get(url);
}

/** Let go of the fetched images of `entries` (their blob URLs hold the bytes). */
function forget(entries) {
  for (const entry of entries) {
    for (const image of entry.images || []) {
      const result = results.get(image.url);
      results.delete(image.url);
      result?.then((r) => r.src?.startsWith("blob:") && URL.revokeObjectURL(r.src));
    }
  }
}

/** A control map's caption: "control map · unit 1 · canny → tiny-canny". */
function mapCaption(map) {
  if (!map) return "control map";
  const pre = map.pre && map.pre !== "none" ? `${map.pre} → ` : "";
  return `control map · unit ${map.unit} · ${pre}${map.model}`;
}

export class Tasks {
  constructor({ onReuse, onUseAsInput, onUseAsControl, onSettled, onTool, onUsePrompt }) {
    this.onReuse = onReuse;
    this.onUseAsInput = onUseAsInput;
    /** `onUseAsControl({ ref, url, name, map })`: a gallery image as a control unit's image */
    this.onUseAsControl = onUseAsControl;
    this.onSettled = onSettled;
    /** `onTool(kind, { ref, url, label, button })`: a gallery image's tool buttons ("upscale", "cutout",
     * "faces", "points", "describe", "background") */
    this.onTool = onTool;
    /** `onUsePrompt(text)`: a description's "Use as prompt" */
    this.onUsePrompt = onUsePrompt;
    /** what the server can do besides upscaling (which always can: Lanczos): a cut-out (a background
     * model), faces (a face restorer and detector), points (a point segmenter), a description (a
     * captioner), a new background (a main model) */
    this.can = { cutout: false, faces: false, segment: false, caption: false, background: false };
    this.client = null;
    this.owner = null;
    this.live = new Map(); // uid → { progress, queuePosition, preview }: not persisted
    this.cards = new Map(); // uid → run card element
    this.timer = null;
    this.polling = false;
    this.pollAgain = false;
    // a gallery image is fetched when it comes near the view, not all of them when the page opens
    this.visible = new IntersectionObserver(
      (seen) => {
        for (const { isIntersecting, target } of seen) {
          if (!isIntersecting) continue;
          this.visible.unobserve(target);
          target.load?.();
        }
      },
      { rootMargin: "400px" },
    );
    this.runs = document.getElementById("runs");
    this.gallery = document.getElementById("gallery");
    document.getElementById("gallery-clear").addEventListener("click", () => this.clear());
    window.addEventListener("storage", (event) => {
      if (event.key === STORE) this.renderGallery(); // another tab of this browser
    });
  }

  /** Follow and show the tasks of `owner` (a digest of the public key), signed by `client`. */
  setSession(client, owner) {
    this.client = client;
    if (owner !== this.owner) {
      this.owner = owner;
      this.cards.clear();
      this.runs.replaceChildren();
    }
    this.renderRuns();
    this.renderGallery();
    this.schedule(0);
  }

  entries() {
    return load().filter((e) => e.owner === this.owner);
  }

  /** What the server offers (from ListModels; any of `cutout`, `faces`, `segment`, `caption`,
   * `background`): each tool's buttons show only where it can. */
  setTools(flags) {
    const next = { ...this.can };
    for (const [key, value] of Object.entries(flags)) next[key] = Boolean(value);
    if (Object.keys(next).every((key) => next[key] === this.can[key])) return;
    this.can = next;
    this.renderGallery();
  }

  update(uid, change) {
    const all = load();
    const entry = all.find((e) => e.uid === uid && e.owner === this.owner);
    if (!entry) return null;
    Object.assign(entry, change);
    this.save(all);
    return entry;
  }

  save(all) {
    const trimmed = all.slice(-KEEP);
    try {
      localStorage.setItem(STORE, JSON.stringify(trimmed));
    } catch {
      // storage full or disabled: the page still works, it just forgets on reload
    }
  }

  /** A task just submitted: `form` is the form's settings (for "reuse"), or a tool's (`form.tool`). */
  add(uid, form) {
    const all = load();
    all.push({ uid, owner: this.owner, created: Date.now(), form, status: "Queuing", images: [] });
    this.save(all);
    this.live.set(uid, { progress: 0, queuePosition: null, preview: null });
    this.renderRuns();
    this.schedule(0);
  }

  active() {
    return this.entries().filter((e) => !TERMINAL.has(e.status));
  }

  schedule(delay = POLL_MS) {
    clearTimeout(this.timer);
    if (!this.client || !this.active().length) return;
    this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    if (this.polling) {
      this.pollAgain = true; // one call at a time: the next one follows this one at once
      return;
    }
    this.polling = true;
    this.pollAgain = false;
    let uids = this.active().map((e) => e.uid).slice(0, 100);
    // a tab in the background asks less often
    let delay = document.hidden ? POLL_MS * 4 : POLL_MS;
    while (uids.length) {
      try {
        const details = await this.client.listTasksDetails(uids);
        for (const detail of details) this.apply(detail);
        this.setRunsError("");
        break;
      } catch (error) {
        // a task deleted by the server's retention (or of another key): forget it, ask again for the rest
        const gone = error instanceof ApiError && error.retCode === 230 && /task '([^']+)' not found/.exec(error.message);
        if (gone && uids.includes(gone[1])) {
          this.update(gone[1], { status: "Gone", error: "The server no longer has this task." });
          uids = uids.filter((uid) => uid !== gone[1]);
          this.renderGallery();
          continue;
        }
        this.setRunsError(`Could not follow the running tasks: ${error.message}`);
        delay = 3000;
        break;
      }
    }
    this.polling = false;
    this.renderRuns();
    this.schedule(this.pollAgain ? 0 : delay);
  }

  /** One TaskDetail: progress and previews in memory; status, images, errors persisted. */
  apply(detail) {
    const uid = detail.TaskUID;
    this.live.set(uid, {
      progress: detail.Progress || 0,
      queuePosition: detail.QueuePosition ?? null,
      preview: detail.PreviewImage || this.live.get(uid)?.preview || null,
    });
    const seeds = detail.SeedList && detail.SeedList.length ? detail.SeedList : null;
    const before = this.entries().find((e) => e.uid === uid);
    const urls = detail.ImgList || [];
    // the images first (one per seed), then the control maps (ReturnControlMaps), one per unit that ran
    const maps = before?.form?.controlMaps?.length || 0;
    const count = seeds ? seeds.length : Math.max(0, urls.length - maps);
    const change = {
      status: detail.Status,
      images: urls.map((url, i) =>
        i < count ? { url, seed: seeds ? seeds[i] : (detail.Seed ?? 0) + i } : { url, map: i - count },
      ),
      texts: detail.TxtList || [],
      error: detail.ErrorMassage || "",
      warnings: detail.Warnings || [],
      cost: detail.ConsumeApiPoint || 0,
      prompt: detail.Prompt || "",
    };
    const entry = this.update(uid, change);
    if (entry && TERMINAL.has(entry.status) && before && !TERMINAL.has(before.status)) {
      this.live.delete(uid);
      this.settled(entry);
    }
  }

  settled(entry) {
    const title = describe(entry.form, 40);
    if (entry.status === "Finished" && !entry.images.length && entry.texts?.length) {
      announce(`Finished: ${entry.texts.length === 1 ? "the description" : `${entry.texts.length} descriptions`} for “${title}”.`);
    } else if (entry.status === "Finished") {
      const maps = entry.images.filter((i) => i.map !== undefined).length;
      const n = entry.images.length - maps;
      const also = maps ? ` and ${maps} control map${maps === 1 ? "" : "s"}` : "";
      announce(`Finished: ${n} image${n === 1 ? "" : "s"}${also} for “${title}”.`);
    } else if (entry.status === "Canceled") announce(`Canceled: “${title}”.`);
    else announce(`Failed: ${entry.error || entry.status}.`);
    this.renderGallery();
    this.onSettled(entry);
  }

  async cancel(uid, button, status) {
    button.disabled = true;
    button.textContent = "Canceling…";
    try {
      await this.client.cancelTask([uid]);
      this.schedule(0);
    } catch (error) {
      button.disabled = false;
      button.textContent = "Cancel";
      status.textContent = `Cancel failed: ${error.message}`;
    }
  }

  setRunsError(message) {
    const empty = document.getElementById("runs-empty");
    empty.classList.toggle("warning", Boolean(message));
    if (message) empty.textContent = message;
  }

  renderRuns() {
    const active = this.active();
    const empty = document.getElementById("runs-empty");
    if (!empty.classList.contains("warning")) {
      empty.textContent = "Nothing running. Tasks you start show their queue position, progress and live preview here.";
    }
    empty.hidden = active.length > 0 && !empty.classList.contains("warning");
    const wanted = new Set(active.map((e) => e.uid));
    for (const [uid, card] of this.cards) {
      if (!wanted.has(uid)) {
        card.remove();
        this.cards.delete(uid);
      }
    }
    for (const entry of active) {
      let card = this.cards.get(entry.uid);
      if (!card) {
        card = this.runCard(entry);
        this.cards.set(entry.uid, card);
        this.runs.prepend(card);
      }
      this.updateCard(card, entry, this.live.get(entry.uid) || {});
    }
  }

  runCard(entry) {
    const id = `run-${entry.uid}`;
    const status = h("p", { class: "run-status", id: `${id}-status` }, "Submitted");
    const progress = h("progress", { max: 100, value: 0, "aria-labelledby": `${id}-title`, "aria-describedby": `${id}-status` });
    const preview = h("img", { class: "run-preview", alt: "", hidden: true });
    const cancel = h("button", { type: "button", class: "secondary small", "aria-describedby": `${id}-title` }, "Cancel");
    cancel.addEventListener("click", () => this.cancel(entry.uid, cancel, status));
    const form = entry.form || {};
    const about = form.tool
      ? `${form.model || ""} · ${form.ref || "uploaded"} · ${entry.uid}`
      : `${form.width}×${form.height} · ${form.steps} steps · ${form.model || ""} · ${entry.uid}`;
    return h(
      "li",
      { class: "run", dataset: { uid: entry.uid, tool: form.tool || null } },
      h("div", { class: "run-thumb" }, preview),
      h(
        "div",
        { class: "run-body" },
        h("p", { class: "run-title", id: `${id}-title` }, describe(form)),
        h("p", { class: "hint" }, about),
        status,
        h("div", { class: "row tight" }, progress, cancel),
      ),
    );
  }

  updateCard(card, entry, live) {
    const status = card.querySelector(".run-status");
    const progress = card.querySelector("progress");
    const preview = card.querySelector(".run-preview");
    const percent = Math.round((live.progress || 0) * 100);
    let text;
    if (entry.status === "Queuing") {
      text = live.queuePosition ? `Queued · position ${live.queuePosition}` : "Queued";
      progress.removeAttribute("value"); // indeterminate while it waits
    } else {
      text = `Running · ${percent}%`;
      progress.value = percent;
    }
    if (!status.textContent.startsWith("Cancel failed")) status.textContent = text;
    card.dataset.status = entry.status;
    if (live.preview) {
      preview.src = live.preview;
      preview.alt = `Live preview at ${percent}%`;
      preview.hidden = false;
    }
  }

  renderGallery() {
    const done = this.entries()
      .filter((e) => TERMINAL.has(e.status))
      .sort((a, b) => b.created - a.created);
    document.getElementById("gallery-empty").hidden = done.length > 0;
    this.gallery.replaceChildren(...done.flatMap((entry) => this.galleryItems(entry)));
  }

  remove(uid) {
    const all = load();
    forget(all.filter((e) => e.uid === uid && e.owner === this.owner));
    this.save(all.filter((e) => !(e.uid === uid && e.owner === this.owner)));
    this.renderGallery();
    announce("Removed from the gallery.");
  }

  clear() {
    const all = load();
    const mine = (e) => e.owner === this.owner && TERMINAL.has(e.status);
    forget(all.filter(mine));
    this.save(all.filter((e) => !mine(e)));
    this.renderGallery();
    announce("Gallery cleared.");
  }

  galleryItems(entry) {
    const form = entry.form || {};
    const reuse = (seed) =>
      h(
        "button",
        { type: "button", class: "secondary small", title: "Reuse these settings", onclick: () => this.onReuse(form, seed) },
        "Reuse settings",
      );
    const remove = () =>
      h(
        "button",
        {
          type: "button",
          class: "icon small",
          "aria-label": "Remove from gallery",
          title: "Remove this task from the gallery",
          onclick: () => this.remove(entry.uid),
        },
        "✕",
      );
    const tool = form.tool || null;
    if (entry.status !== "Finished") {
      const what = entry.status === "Canceled" ? "Canceled" : entry.status === "Gone" ? "Gone" : "Failed";
      return [
        h(
          "li",
          { class: `shot ended ${entry.status.toLowerCase()}`, dataset: { uid: entry.uid, status: entry.status, tool } },
          h("p", { class: "shot-title" }, describe(form, 60)),
          h("p", { class: "status-line" }, `${what}${entry.error && entry.status !== "Canceled" ? `: ${entry.error}` : ""}`),
          h("div", { class: "shot-actions" }, tool ? null : reuse(form.seed), remove()),
        ),
      ];
    }
    if (!entry.images.length && entry.texts?.length) return [this.textItem(entry, remove)];
    const several = entry.images.filter((i) => i.map === undefined).length > 1;
    return entry.images.map((image, index) => {
      // a control map (ReturnControlMaps): what the ControlNet saw, not an image of the prompt
      const isMap = image.map !== undefined;
      const map = isMap ? form.controlMaps?.[image.map] || null : null;
      const dataset = { uid: entry.uid, index: String(index), status: "Finished", tool, map: isMap ? String(image.map) : null };
      if (!tool && !isMap) dataset.seed = String(image.seed);
      const item = h("li", { class: `shot${tool ? ` ${tool}` : ""}${isMap ? " control-map" : ""}`, dataset });
      const name = `picserve-${entry.uid}-${index + 1}${isMap ? "-control-map" : ""}.png`;
      // what this image is, for its alt text and for the tasks made from it
      const source = form.sources?.[index] ?? form.source;
      const label = tool
        ? describe({ ...form, source }, 60)
        : isMap
          ? `${mapCaption(map)}: ${excerpt(form.prompt, 40)}`
          : `${excerpt(form.prompt, 40)}${several ? ` #${index + 1}` : ""}`;
      const alt = tool
        ? label
        : isMap
          ? `Control map of unit ${map?.unit ?? image.map + 1}${map?.pre && map.pre !== "none" ? ` (${map.pre})` : ""} for “${excerpt(form.prompt, 60)}”`
          : `${excerpt(form.prompt, 60)} (seed ${image.seed})`;
      const img = h("img", { alt, loading: "lazy", decoding: "async" });
      const open = h(
        "a",
        { class: "thumb", href: image.url, target: "_blank", rel: "noopener", title: "Open full size" },
        img,
        isMap ? h("span", { class: "badge map-badge", "aria-hidden": "true" }, "Control map") : null,
      );
      const about = tool ? toolCaption(form) : isMap ? mapCaption(map) : `seed ${image.seed} · ${form.model || ""}`;
      const known = tool ? (form.tool === "upscale" && form.width ? `${form.width}×${form.height} · ` : "") : `${form.width}×${form.height} · `;
      const caption = h("figcaption", {}, `${known}${about}`);
      const parameters = h("pre", { class: "parameters" }, "Reading the image's parameters…");
      const details = tool || isMap ? null : h("details", { class: "params" }, h("summary", {}, "Parameters"), parameters);
      const download = h(
        "a",
        { class: "button icon small", href: image.url, download: name, "aria-label": "Download", title: "Download" },
        "⤓",
      );
      const full = h(
        "a",
        { class: "button icon small", href: image.url, target: "_blank", rel: "noopener", "aria-label": "Open full size", title: "Open full size" },
        "⤢",
      );
      const useAsInput = h(
        "button",
        { type: "button", class: "secondary small", onclick: () => this.onUseAsInput(image.url, name) },
        "Use as input",
      );
      // the image (by its TaskUID) as a control unit's image; a control map as a ready-made map
      const useAsControl = this.onUseAsControl
        ? h(
            "button",
            {
              type: "button",
              class: "secondary small",
              title: isMap ? "A control unit with this map, ready-made (no preprocessor)" : "A control unit with this image",
              onclick: () => this.onUseAsControl({ ref: `task:${entry.uid}/${index}`, url: image.url, name, map: isMap ? map || {} : null }),
            },
            "Use as control",
          )
        : null;
      let tiles = null;
      if (form.tiling && !isMap) {
        const grid = h("div", { class: "tile-grid", role: "img", "aria-label": "The image repeated 2 × 2, to check its seams" });
        for (let i = 0; i < 4; i++) grid.append(h("img", { alt: "" }));
        tiles = h("details", { class: "tiles", open: true }, h("summary", {}, "Seams (2 × 2)"), grid);
      }
      // the image, by its TaskUID: the server takes it from its own store, nothing is uploaded again
      const ref = `task:${entry.uid}/${index}`;
      const toolButton = (kind, text, title) => {
        const button = h("button", { type: "button", class: "secondary small", title, dataset: { tool: kind } }, text);
        button.addEventListener("click", () => this.onTool(kind, { ref, url: image.url, label, button }));
        return button;
      };
      const can = this.can;
      // shown once the image is read and has transparency (a cut-out): it is the foreground
      const newBackground = can.background && !isMap
        ? toolButton("background", "New background", "Paint a background around this cut-out (GenerateBackgrounds, in the panel above)")
        : null;
      if (newBackground) newBackground.hidden = true;
      const tools = h(
        "div",
        { class: "shot-actions shot-tools" },
        toolButton("upscale", "Upscale", "Upscale this image (ResizeImage, by its TaskUID)"),
        can.cutout ? toolButton("cutout", "Remove background", "Cut out this image's subject (RemoveBackground, by its TaskUID)") : null,
        can.faces && !isMap ? toolButton("faces", "Restore faces", "Restore the faces in this image (RestoreFaces, by its TaskUID)") : null,
        can.segment ? toolButton("points", "Cut out by clicks", "Cut out what you click on this image (ExtractContents, in the panel above)") : null,
        can.caption ? toolButton("describe", "Describe", "Describe this image; the text becomes the prompt (DescribeImages, by its TaskUID)") : null,
        newBackground,
      );
      item.append(
        h("figure", {}, open, caption),
        h("div", { class: "shot-actions" }, tool || isMap ? null : reuse(image.seed), useAsInput, useAsControl, download, full, remove()),
        tools,
      );
      if (details) item.append(details);
      if (entry.warnings?.length) item.append(h("p", { class: "hint warning" }, entry.warnings.join(" ")));
      if (tiles) item.append(tiles);
      item.load = () => loadResult(image.url).then((result) => {
        if (result.error) {
          item.classList.add("expired");
          caption.textContent = `${caption.textContent} · ${result.error}`;
          parameters.textContent = "The server no longer has this image.";
          return;
        }
        img.src = result.src;
        download.href = result.src;
        if (result.alpha) {
          item.dataset.alpha = "true";
          if (newBackground) newBackground.hidden = false;
        }
        if (tiles) for (const tile of tiles.querySelectorAll("img")) tile.src = result.src;
        const text = result.png?.text?.parameters;
        if (result.png) {
          caption.textContent = `${result.png.width}×${result.png.height} · ${about}`;
          item.dataset.width = String(result.png.width);
          item.dataset.height = String(result.png.height);
        }
        parameters.textContent = text || "This image carries no parameters (or they could not be read).";
        if (text && !isMap) {
          const fields = parseInfotext(text).fields;
          if (fields.Seed) item.dataset.seed = fields.Seed;
        }
      });
      this.visible.observe(item);
      return item;
    });
  }

  /** A description (DescribeImages): its texts, each with "Use as prompt". */
  textItem(entry, remove) {
    const form = entry.form || {};
    const several = entry.texts.length > 1;
    const texts = entry.texts.map((text, index) =>
      h(
        "li",
        {},
        h("p", { class: "description", lang: form.language || "en" }, text),
        h(
          "button",
          {
            type: "button",
            class: "secondary small",
            title: "Replace the prompt with this text",
            onclick: () => this.onUsePrompt?.(text),
          },
          several ? `Use #${index + 1} as prompt` : "Use as prompt",
        ),
      ),
    );
    return h(
      "li",
      { class: "shot text-result", dataset: { uid: entry.uid, status: entry.status, tool: form.tool || null } },
      h("p", { class: "shot-title" }, describe(form, 60)),
      h("ol", { class: "descriptions" }, texts),
      h("p", { class: "hint" }, `${toolCaption(form)}${form.language && form.language !== "en" ? ` · ${form.language}` : ""}`),
      h("div", { class: "shot-actions" }, remove()),
    );
  }
}
