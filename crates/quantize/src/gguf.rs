//! Just enough of the GGUF header to read `general.file_type`: what a
//! file's weights are quantized to, before the quantizer touches it.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::QuantizeError;

const MAGIC: &[u8; 4] = b"GGUF";
const FILE_TYPE_KEY: &str = "general.file_type";

/// The `llama_ftype` a GGUF file declares (0 = all F32).
pub fn read_file_type(path: &Path) -> Result<u32, QuantizeError> {
    let io = |e| QuantizeError::Io(path.to_path_buf(), e);
    let file = std::fs::File::open(path).map_err(io)?;
    let mut r = Reader(BufReader::new(file));
    let bad = |why: String| QuantizeError::NotGguf(path.to_path_buf(), why);
    let mut magic = [0u8; 4];
    r.0.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(bad("no GGUF magic at its start".into()));
    }
    let version = r.u32().map_err(io)?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!("GGUF version {version}; this reader knows 2 and 3")));
    }
    let _tensors = r.u64().map_err(io)?;
    let kvs = r.u64().map_err(io)?;
    for _ in 0..kvs {
        let key = r.string().map_err(io)?;
        let ty = r.u32().map_err(io)?;
        if key == FILE_TYPE_KEY {
            return match ty {
                4 | 5 => r.u32().map_err(io),
                _ => Err(bad(format!("{FILE_TYPE_KEY} has value type {ty}, not an integer"))),
            };
        }
        r.skip(ty).map_err(|e| bad(e.to_string()))?;
    }
    Err(bad(format!("no {FILE_TYPE_KEY} in its header")))
}

/// llama.cpp's name for a `llama_ftype`.
pub fn file_type_name(ftype: u32) -> &'static str {
    match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        25 => "IQ4_NL",
        32 => "BF16",
        _ => "other",
    }
}

struct Reader<R>(R);

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> std::io::Result<String> {
        let len = self.u64()?;
        let mut s = Vec::new();
        (&mut self.0).take(len).read_to_end(&mut s)?;
        if s.len() as u64 != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(String::from_utf8_lossy(&s).into_owned())
    }

    /// Skips one value of GGUF type `ty`.
    fn skip(&mut self, ty: u32) -> std::io::Result<()> {
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => return self.string().map(drop),
            9 => {
                let (inner, n) = (self.u32()?, self.u64()?);
                for _ in 0..n {
                    self.skip(inner)?;
                }
                return Ok(());
            }
            _ => return Err(std::io::Error::other(format!("unknown GGUF value type {ty}"))),
        };
        std::io::copy(&mut (&mut self.0).take(width), &mut std::io::sink()).map(drop)
    }
}
