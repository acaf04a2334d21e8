// The inpainting mask, painted over the image. The canvas has the image's own pixel size (CSS scales
// it), so the mask sent is exactly the image's size: white = repaint, black = keep.

const PAINT = "rgb(255 48 96)";

export class MaskPainter {
  /** `canvas` lies over the image; `onChange()` is called after each stroke, invert or clear. */
  constructor(canvas, { onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.onChange = onChange;
    this.mode = "brush"; // or "eraser"
    this.brushSize = 16; // diameter, in image pixels
    this.painted = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (event) => this.#down(event));
    canvas.addEventListener("pointermove", (event) => this.#move(event));
    canvas.addEventListener("pointerup", (event) => this.#up(event));
    canvas.addEventListener("pointercancel", (event) => this.#up(event));
  }

  /** A fresh, empty mask of `width` × `height` image pixels. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.clear();
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
    this.onChange();
  }

  /** Painted becomes unpainted and the other way round. */
  invert() {
    const { width, height } = this.canvas;
    const image = this.context.getImageData(0, 0, width, height);
    const { data } = image;
    let any = false;
    for (let i = 0; i < data.length; i += 4) {
      const on = data[i + 3] < 128;
      data[i] = 255;
      data[i + 1] = 48;
      data[i + 2] = 96;
      data[i + 3] = on ? 255 : 0;
      any ||= on;
    }
    this.context.putImageData(image, 0, 0);
    this.painted = any;
    this.onChange();
  }

  /** Whether any pixel is painted. */
  isEmpty() {
    if (!this.painted) return true;
    const { data } = this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) return false;
    return true;
  }

  /** The mask as a PNG data URI (opaque black and white, the image's size), or null when empty. */
  toDataURL() {
    if (this.isEmpty()) return null;
    const { width, height } = this.canvas;
    const source = this.context.getImageData(0, 0, width, height).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const context = out.getContext("2d");
    const image = context.createImageData(width, height);
    for (let i = 0; i < source.length; i += 4) {
      const value = source[i + 3] >= 128 ? 255 : 0; // a hard edge: half-covered pixels decide by majority
      image.data[i] = value;
      image.data[i + 1] = value;
      image.data[i + 2] = value;
      image.data[i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    return out.toDataURL("image/png");
  }

  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * this.canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * this.canvas.height,
    };
  }

  #stroke(from, to) {
    const c = this.context;
    c.save();
    c.globalCompositeOperation = this.mode === "eraser" ? "destination-out" : "source-over";
    c.strokeStyle = PAINT;
    c.fillStyle = PAINT;
    c.lineWidth = this.brushSize;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    if (from.x === to.x && from.y === to.y) {
      c.arc(to.x, to.y, this.brushSize / 2, 0, Math.PI * 2);
      c.fill();
    } else {
      c.moveTo(from.x, from.y);
      c.lineTo(to.x, to.y);
      c.stroke();
    }
    c.restore();
    if (this.mode !== "eraser") this.painted = true;
  }

  #down(event) {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    const point = this.#point(event);
    this.last = point;
    this.#stroke(point, point);
  }

  #move(event) {
    if (!this.last) return;
    const point = this.#point(event);
    this.#stroke(this.last, point);
    this.last = point;
  }

  #up(event) {
    if (!this.last) return;
    this.last = null;
    if (this.canvas.hasPointerCapture(event.pointerId)) this.canvas.releasePointerCapture(event.pointerId);
    this.onChange();
  }
}
