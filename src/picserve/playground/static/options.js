// The choices the API takes but does not list: its samplers, and SDXL's sizes.

/** picserve's samplers (picserve/domain.py SAMPLER_NAMES; a test keeps the two equal). */
export const SAMPLERS = [
  "Euler",
  "Euler a",
  "LMS",
  "LMS Karras",
  "Heun",
  "DPM2",
  "DPM2 a",
  "DPM++ 2S a",
  "DPM++ 2M",
  "DPM++ 2M Karras",
  "DPM++ SDE",
  "DPM++ SDE Karras",
  "DPM++ 2M SDE",
  "DPM++ 2M SDE Karras",
  "DDIM",
  "UniPC",
  "DEIS",
  "LCM",
];

/** SDXL's training buckets (about one megapixel each), then two small sizes for quick tries. */
export const SIZES = [
  [1024, 1024, "1:1"],
  [1152, 896, "9:7"],
  [896, 1152, "7:9"],
  [1216, 832, "3:2"],
  [832, 1216, "2:3"],
  [1344, 768, "7:4"],
  [768, 1344, "4:7"],
  [1536, 640, "12:5"],
  [640, 1536, "5:12"],
  [512, 512, "1:1, draft"],
  [64, 64, "1:1, tiny"],
];
