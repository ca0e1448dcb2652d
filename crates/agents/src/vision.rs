//! Counting people and objects in a frame without a model: subtract a background,
//! threshold the difference, and group the changed pixels into connected blobs.
//! Deterministic, CPU only, nothing downloaded; pure functions over grey frames.
//!
//! - grey level: `(299 R + 587 G + 114 B + 500) / 1000` (integer Rec. 601 luma);
//! - a pixel is foreground when `|frame - background| > threshold`;
//! - blobs join foreground pixels that touch by an edge (4-connectivity) or also by a
//!   corner (8-connectivity); blobs under `min_area` pixels are noise and dropped;
//! - blobs are listed in the order their top-left-most pixel is met scanning rows
//!   from the top, each row from the left.

use serde::{Deserialize, Serialize};

/// One grey frame, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gray {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Gray {
    pub fn from_rgba(img: &image::RgbaImage) -> Self {
        let pixels = img
            .pixels()
            .map(|p| {
                let [r, g, b, _] = p.0;
                let luma =
                    (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000;
                luma.min(255) as u8
            })
            .collect();
        Self {
            width: img.width(),
            height: img.height(),
            pixels,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    Four,
    Eight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub threshold: u8,
    pub min_area: usize,
    pub connectivity: Connectivity,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            threshold: 30,
            min_area: 20,
            connectivity: Connectivity::Eight,
        }
    }
}

/// A detected blob: its bounding box and its size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub area: usize,
}

/// An axis-aligned rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// True when the two share at least one pixel.
    pub fn overlaps(&self, o: &Object) -> bool {
        let (ax2, ay2) = (
            u64::from(self.x) + u64::from(self.width),
            u64::from(self.y) + u64::from(self.height),
        );
        let (bx2, by2) = (
            u64::from(o.x) + u64::from(o.width),
            u64::from(o.y) + u64::from(o.height),
        );
        u64::from(self.x) < bx2
            && u64::from(o.x) < ax2
            && u64::from(self.y) < by2
            && u64::from(o.y) < ay2
    }
}

/// The pixels of `frame` that differ from `background` by more than `threshold`.
/// Both frames must have the same size.
pub fn foreground(frame: &Gray, background: &Gray, threshold: u8) -> Vec<bool> {
    frame
        .pixels
        .iter()
        .zip(&background.pixels)
        .map(|(f, b)| f.abs_diff(*b) > threshold)
        .collect()
}

/// The connected blobs of `mask` (`width` pixels per row) of at least `min_area` pixels.
pub fn components(
    mask: &[bool],
    width: u32,
    height: u32,
    connectivity: Connectivity,
    min_area: usize,
) -> Vec<Object> {
    let (w, h) = (width as usize, height as usize);
    let mut seen = vec![false; mask.len()];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let neighbours: &[(isize, isize)] = match connectivity {
        Connectivity::Four => &[(0, -1), (-1, 0), (1, 0), (0, 1)],
        Connectivity::Eight => &[
            (-1, -1),
            (0, -1),
            (1, -1),
            (-1, 0),
            (1, 0),
            (-1, 1),
            (0, 1),
            (1, 1),
        ],
    };
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        let mut area = 0;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            area += 1;
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
            for (dx, dy) in neighbours {
                let (nx, ny) = (x as isize + dx, y as isize + dy);
                if nx < 0 || ny < 0 || nx as usize >= w || ny as usize >= h {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if area >= min_area {
            out.push(Object {
                x: x0 as u32,
                y: y0 as u32,
                width: (x1 - x0 + 1) as u32,
                height: (y1 - y0 + 1) as u32,
                area,
            });
        }
    }
    out
}

/// The objects of `frame` against `background` (same size).
pub fn detect(frame: &Gray, background: &Gray, options: &Options) -> Vec<Object> {
    let mask = foreground(frame, background, options.threshold);
    components(
        &mask,
        frame.width,
        frame.height,
        options.connectivity,
        options.min_area,
    )
}

/// The per-pixel median of `frames` (the lower middle value for an even count), a
/// background that ignores whatever moves through fewer than half of them. All
/// frames must have the same size; `frames` must not be empty.
pub fn median_background(frames: &[Gray]) -> Gray {
    let first = &frames[0];
    let mut column = Vec::with_capacity(frames.len());
    let pixels = (0..first.pixels.len())
        .map(|i| {
            column.clear();
            column.extend(frames.iter().map(|f| f.pixels[i]));
            column.sort_unstable();
            column[(column.len() - 1) / 2]
        })
        .collect();
    Gray {
        width: first.width,
        height: first.height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w` x `h` frame of `bg` with the given rectangles `(x, y, w, h, level)`.
    fn frame(w: u32, h: u32, bg: u8, rects: &[(u32, u32, u32, u32, u8)]) -> Gray {
        let mut pixels = vec![bg; (w * h) as usize];
        for &(x, y, rw, rh, level) in rects {
            for yy in y..y + rh {
                for xx in x..x + rw {
                    pixels[(yy * w + xx) as usize] = level;
                }
            }
        }
        Gray {
            width: w,
            height: h,
            pixels,
        }
    }

    #[test]
    fn rectangles_are_found_with_their_boxes() {
        let bg = frame(40, 30, 200, &[]);
        let f = frame(
            40,
            30,
            200,
            &[(2, 3, 4, 6, 20), (20, 10, 5, 5, 20), (35, 25, 2, 2, 20)],
        );
        let got = detect(&f, &bg, &Options::default());
        assert_eq!(
            got,
            vec![
                Object {
                    x: 2,
                    y: 3,
                    width: 4,
                    height: 6,
                    area: 24
                },
                Object {
                    x: 20,
                    y: 10,
                    width: 5,
                    height: 5,
                    area: 25
                },
            ]
        );
        // The 2 x 2 blob (area 4) is noise unless the minimum area allows it.
        let all = detect(
            &f,
            &bg,
            &Options {
                min_area: 4,
                ..Options::default()
            },
        );
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            Object {
                x: 35,
                y: 25,
                width: 2,
                height: 2,
                area: 4
            }
        );
    }

    #[test]
    fn threshold_is_strict() {
        let bg = frame(4, 4, 100, &[]);
        let f = frame(4, 4, 100, &[(0, 0, 2, 2, 130), (2, 2, 2, 2, 131)]);
        let opts = Options {
            min_area: 1,
            ..Options::default()
        };
        assert_eq!(
            detect(&f, &bg, &opts),
            vec![Object {
                x: 2,
                y: 2,
                width: 2,
                height: 2,
                area: 4
            }]
        );
    }

    #[test]
    fn diagonal_touch_joins_only_with_eight_connectivity() {
        let bg = frame(6, 6, 0, &[]);
        let f = frame(6, 6, 0, &[(0, 0, 2, 2, 255), (2, 2, 2, 2, 255)]);
        let opts = |connectivity| Options {
            threshold: 30,
            min_area: 1,
            connectivity,
        };
        assert_eq!(
            detect(&f, &bg, &opts(Connectivity::Eight)),
            vec![Object {
                x: 0,
                y: 0,
                width: 4,
                height: 4,
                area: 8
            }]
        );
        assert_eq!(detect(&f, &bg, &opts(Connectivity::Four)).len(), 2);
    }

    #[test]
    fn median_background_ignores_passers_by() {
        let frames = vec![
            frame(5, 1, 50, &[(0, 0, 1, 1, 250)]),
            frame(5, 1, 50, &[(1, 0, 1, 1, 250)]),
            frame(5, 1, 50, &[(1, 0, 1, 1, 240)]),
        ];
        assert_eq!(median_background(&frames).pixels, vec![50, 240, 50, 50, 50]);
    }

    #[test]
    fn luma_and_overlap() {
        let img = image::RgbaImage::from_fn(3, 1, |x, _| match x {
            0 => image::Rgba([255, 0, 0, 255]),
            1 => image::Rgba([0, 255, 0, 255]),
            _ => image::Rgba([255, 255, 255, 0]),
        });
        assert_eq!(Gray::from_rgba(&img).pixels, vec![76, 150, 255]);
        let r = Rect {
            x: 10,
            y: 10,
            width: 5,
            height: 5,
        };
        let o = |x, y| Object {
            x,
            y,
            width: 2,
            height: 2,
            area: 4,
        };
        assert!(r.overlaps(&o(14, 14)));
        assert!(r.overlaps(&o(9, 9)));
        assert!(!r.overlaps(&o(15, 10)));
        assert!(!r.overlaps(&o(8, 10)));
    }
}
