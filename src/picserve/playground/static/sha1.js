// SHA-1 in plain JavaScript (FIPS 180-4, section 6.1), for pages without WebCrypto.
//
// `crypto.subtle` exists only in secure contexts (https, or http on localhost): a playground opened
// as http://192.168.1.20:8080/playground/ has none, and must still sign its requests. SHA-1 is
// what the PICPIK signature uses; it protects nothing here beyond what the protocol itself does.

const K = [0x5a827999, 0x6ed9eba1, 0x8f1bbcdc | 0, 0xca62c1d6 | 0];

/** The 20-byte SHA-1 digest of `data` (a Uint8Array, or a string hashed as its UTF-8 bytes). */
export function sha1(data) {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const length = bytes.length;
  // the message, a 1 bit, zeros, and its length in bits as a 64-bit big-endian number: whole 64-byte blocks
  const total = (Math.floor((length + 8) / 64) + 1) * 64;
  const block = new Uint8Array(total);
  block.set(bytes);
  block[length] = 0x80;
  const view = new DataView(block.buffer);
  view.setUint32(total - 8, Math.floor(length / 0x20000000)); // the bits above 2^32
  view.setUint32(total - 4, (length << 3) >>> 0); // length × 8, modulo 2^32

  let h0 = 0x67452301;
  let h1 = 0xefcdab89 | 0;
  let h2 = 0x98badcfe | 0;
  let h3 = 0x10325476;
  let h4 = 0xc3d2e1f0 | 0;
  const w = new Int32Array(80);
  for (let offset = 0; offset < total; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getInt32(offset + i * 4);
    for (let i = 16; i < 80; i++) {
      const x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
      w[i] = (x << 1) | (x >>> 31);
    }
    let a = h0;
    let b = h1;
    let c = h2;
    let d = h3;
    let e = h4;
    for (let i = 0; i < 80; i++) {
      let f;
      if (i < 20) f = (b & c) | (~b & d);
      else if (i < 40) f = b ^ c ^ d;
      else if (i < 60) f = (b & c) | (b & d) | (c & d);
      else f = b ^ c ^ d;
      const t = (((a << 5) | (a >>> 27)) + f + e + K[(i / 20) | 0] + w[i]) | 0;
      e = d;
      d = c;
      c = (b << 30) | (b >>> 2);
      b = a;
      a = t;
    }
    h0 = (h0 + a) | 0;
    h1 = (h1 + b) | 0;
    h2 = (h2 + c) | 0;
    h3 = (h3 + d) | 0;
    h4 = (h4 + e) | 0;
  }
  const digest = new Uint8Array(20);
  const out = new DataView(digest.buffer);
  [h0, h1, h2, h3, h4].forEach((h, i) => out.setInt32(i * 4, h));
  return digest;
}

/** Lowercase hex of bytes. */
export function hex(bytes) {
  let text = "";
  for (const byte of bytes) text += byte.toString(16).padStart(2, "0");
  return text;
}

/** The lowercase hex SHA-1 of `data` (a string is hashed as UTF-8). */
export function sha1Hex(data) {
  return hex(sha1(data));
}
