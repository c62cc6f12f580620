//! A minimal ELF64 reader for component images: the entry point and the
//! PT_LOAD segments. Every offset and size is checked against the file; a
//! bad image yields an error, never an out-of-bounds read.

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub writable: bool,
}

/// A parsed image (segments refer into the original bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub entry: u64,
    pub segments: heapless_segments::Segments,
}

/// A fixed-capacity segment list (no allocator needed to parse).
pub mod heapless_segments {
    use super::Segment;

    pub const MAX_SEGMENTS: usize = 8;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Segments {
        items: [Option<Segment>; MAX_SEGMENTS],
        len: usize,
    }

    impl Segments {
        pub const fn new() -> Self {
            Segments {
                items: [None; MAX_SEGMENTS],
                len: 0,
            }
        }
        pub fn push(&mut self, segment: Segment) -> bool {
            if self.len == MAX_SEGMENTS {
                return false;
            }
            self.items[self.len] = Some(segment);
            self.len += 1;
            true
        }
        pub fn iter(&self) -> impl Iterator<Item = &Segment> {
            self.items[..self.len].iter().flatten()
        }
    }

    impl Default for Segments {
        fn default() -> Self {
            Self::new()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    NotElf64LittleEndian,
    NotX86_64Executable,
    BadProgramHeaders,
    SegmentOutOfFile,
    SegmentOutOfRange,
    TooManySegments,
}

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;

fn u16_at(bytes: &[u8], offset: usize) -> Result<u16, ElfError> {
    let slice = bytes.get(offset..offset + 2).ok_or(ElfError::TooShort)?;
    Ok(u16::from_le_bytes([slice[0], slice[1]]))
}

fn u32_at(bytes: &[u8], offset: usize) -> Result<u32, ElfError> {
    let slice = bytes.get(offset..offset + 4).ok_or(ElfError::TooShort)?;
    Ok(u32::from_le_bytes(slice.try_into().unwrap()))
}

fn u64_at(bytes: &[u8], offset: usize) -> Result<u64, ElfError> {
    let slice = bytes.get(offset..offset + 8).ok_or(ElfError::TooShort)?;
    Ok(u64::from_le_bytes(slice.try_into().unwrap()))
}

/// Parse an image whose loadable segments must lie in `[0x1000, limit)`.
pub fn parse(bytes: &[u8], limit: u64) -> Result<Image, ElfError> {
    if bytes.len() < 64 {
        return Err(ElfError::TooShort);
    }
    if bytes[..4] != *b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::NotElf64LittleEndian);
    }
    if u16_at(bytes, 16)? != 2 || u16_at(bytes, 18)? != 62 {
        return Err(ElfError::NotX86_64Executable);
    }
    let entry = u64_at(bytes, 24)?;
    let ph_offset = usize::try_from(u64_at(bytes, 32)?).map_err(|_| ElfError::BadProgramHeaders)?;
    let ph_size = u16_at(bytes, 54)? as usize;
    let ph_count = u16_at(bytes, 56)? as usize;
    if ph_size < 56 {
        return Err(ElfError::BadProgramHeaders);
    }
    let mut segments = heapless_segments::Segments::new();
    for index in 0..ph_count {
        let header = ph_offset
            .checked_add(
                index
                    .checked_mul(ph_size)
                    .ok_or(ElfError::BadProgramHeaders)?,
            )
            .ok_or(ElfError::BadProgramHeaders)?;
        if header.checked_add(56).is_none_or(|end| end > bytes.len()) {
            return Err(ElfError::BadProgramHeaders);
        }
        if u32_at(bytes, header)? != PT_LOAD {
            continue;
        }
        let flags = u32_at(bytes, header + 4)?;
        let segment = Segment {
            file_offset: u64_at(bytes, header + 8)?,
            vaddr: u64_at(bytes, header + 16)?,
            file_size: u64_at(bytes, header + 32)?,
            mem_size: u64_at(bytes, header + 40)?,
            writable: flags & PF_W != 0,
        };
        if segment.mem_size == 0 {
            continue;
        }
        let file_end = segment.file_offset.checked_add(segment.file_size);
        if file_end.is_none_or(|end| end > bytes.len() as u64)
            || segment.file_size > segment.mem_size
        {
            return Err(ElfError::SegmentOutOfFile);
        }
        let mem_end = segment.vaddr.checked_add(segment.mem_size);
        if segment.vaddr < 0x1000 || mem_end.is_none_or(|end| end > limit) {
            return Err(ElfError::SegmentOutOfRange);
        }
        if !segments.push(segment) {
            return Err(ElfError::TooManySegments);
        }
    }
    Ok(Image { entry, segments })
}

/// The pages an image occupies: (page address, writable), one entry per
/// page any segment touches, writable if any segment on it is.
pub fn image_pages(image: &Image) -> impl Iterator<Item = (u64, bool)> + '_ {
    // At most MAX_SEGMENTS segments; pages are visited segment by segment
    // and a page shared by two segments is reported once, at its first.
    let segments: [Option<Segment>; heapless_segments::MAX_SEGMENTS] = {
        let mut all = [None; heapless_segments::MAX_SEGMENTS];
        for (slot, segment) in all.iter_mut().zip(image.segments.iter()) {
            *slot = Some(*segment);
        }
        all
    };
    let page_range =
        |segment: &Segment| (segment.vaddr >> 12)..=((segment.vaddr + segment.mem_size - 1) >> 12);
    (0..segments.len()).flat_map(move |index| {
        let segment = segments[index];
        segment.into_iter().flat_map(move |segment| {
            page_range(&segment).filter_map(move |page| {
                let earlier = segments[..index]
                    .iter()
                    .flatten()
                    .any(|s| page_range(s).contains(&page));
                if earlier {
                    return None;
                }
                let writable = segments
                    .iter()
                    .flatten()
                    .any(|s| s.writable && page_range(s).contains(&page));
                Some((page << 12, writable))
            })
        })
    })
}

/// Copy the part of `segment` that falls in the page at `page_vaddr` into
/// `page` (4096 bytes, already zeroed): file bytes only, the rest stays zero.
pub fn fill_page(bytes: &[u8], segment: &Segment, page_vaddr: u64, page: &mut [u8]) {
    let page_end = page_vaddr + page.len() as u64;
    let file_start = segment.vaddr;
    let file_end = segment.vaddr + segment.file_size;
    let start = file_start.max(page_vaddr);
    let end = file_end.min(page_end);
    if start >= end {
        return;
    }
    let source = (segment.file_offset + (start - segment.vaddr)) as usize;
    let length = (end - start) as usize;
    let destination = (start - page_vaddr) as usize;
    page[destination..destination + length].copy_from_slice(&bytes[source..source + length]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(segment: (u64, u64, u64, u64, u32)) -> std::vec::Vec<u8> {
        let mut bytes = std::vec![0u8; 64 + 56 + 32];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[16..18].copy_from_slice(&2u16.to_le_bytes());
        bytes[18..20].copy_from_slice(&62u16.to_le_bytes());
        bytes[24..32].copy_from_slice(&0x20_1000u64.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        let (offset, vaddr, file_size, mem_size, flags) = segment;
        let h = 64;
        bytes[h..h + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        bytes[h + 4..h + 8].copy_from_slice(&flags.to_le_bytes());
        bytes[h + 8..h + 16].copy_from_slice(&offset.to_le_bytes());
        bytes[h + 16..h + 24].copy_from_slice(&vaddr.to_le_bytes());
        bytes[h + 32..h + 40].copy_from_slice(&file_size.to_le_bytes());
        bytes[h + 40..h + 48].copy_from_slice(&mem_size.to_le_bytes());
        for (i, b) in bytes[120..152].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        bytes
    }

    #[test]
    fn parses_a_load_segment_and_fills_pages() {
        let bytes = image_with((120, 0x20_0ff0, 32, 0x2000, 6));
        let image = parse(&bytes, 0x1000_0000).unwrap();
        assert_eq!(image.entry, 0x20_1000);
        let segment = *image.segments.iter().next().unwrap();
        assert!(segment.writable);
        let mut first = [0u8; 4096];
        fill_page(&bytes, &segment, 0x20_0000, &mut first);
        assert_eq!(&first[0xff0..], &bytes[120..136]);
        let mut second = [0u8; 4096];
        fill_page(&bytes, &segment, 0x20_1000, &mut second);
        assert_eq!(&second[..16], &bytes[136..152]);
        assert!(second[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn pages_shared_by_segments_are_listed_once_and_writable_if_any_is() {
        let mut segments = heapless_segments::Segments::new();
        segments.push(Segment {
            vaddr: 0x20_0000,
            mem_size: 0x1800,
            file_offset: 0,
            file_size: 0,
            writable: false,
        });
        segments.push(Segment {
            vaddr: 0x20_1800,
            mem_size: 0x1000,
            file_offset: 0,
            file_size: 0,
            writable: true,
        });
        let image = Image {
            entry: 0x20_0000,
            segments,
        };
        let pages: std::vec::Vec<(u64, bool)> = image_pages(&image).collect();
        assert_eq!(
            pages,
            std::vec![(0x20_0000, false), (0x20_1000, true), (0x20_2000, true)]
        );
    }

    #[test]
    fn rejects_segments_outside_the_file_or_the_allowed_range() {
        let past_file = image_with((120, 0x20_0000, 4096, 4096, 4));
        assert_eq!(
            parse(&past_file, 0x1000_0000),
            Err(ElfError::SegmentOutOfFile)
        );
        let too_high = image_with((120, 0x1000_0000, 32, 32, 4));
        assert_eq!(
            parse(&too_high, 0x1000_0000),
            Err(ElfError::SegmentOutOfRange)
        );
        let wrapping = image_with((120, u64::MAX - 8, 32, 32, 4));
        assert_eq!(
            parse(&wrapping, 0x1000_0000),
            Err(ElfError::SegmentOutOfRange)
        );
        assert_eq!(parse(&[0u8; 10], 0x1000_0000), Err(ElfError::TooShort));
        let mut not_elf = image_with((120, 0x20_0000, 32, 32, 4));
        not_elf[0] = 0;
        assert_eq!(
            parse(&not_elf, 0x1000_0000),
            Err(ElfError::NotElf64LittleEndian)
        );
    }
}
