/// Class names and colours for segmentation renderings, per dataset M³ViT trains on.
public struct Palette: Sendable, Equatable {
    public var name: String
    public var classes: [String]
    /// RGB per class.
    public var colors: [(UInt8, UInt8, UInt8)]

    public static func == (a: Palette, b: Palette) -> Bool {
        a.name == b.name && a.classes == b.classes && a.colors.elementsEqual(b.colors, by: { $0 == $1 })
    }

    /// Cityscapes' 7 categories (void excluded) in the category-id order of the 7-class Cityscapes
    /// split M³ViT's Cityscapes loader reads; colours of a representative class each (Cityscapes labels).
    public static let cityscapes7 = Palette(
        name: "Cityscapes (7 categories)",
        classes: ["flat", "construction", "object", "nature", "sky", "human", "vehicle"],
        colors: [(128, 64, 128), (70, 70, 70), (220, 220, 0), (107, 142, 35), (70, 130, 180), (220, 20, 60), (0, 0, 142)])

    /// Cityscapes' 19 evaluation classes in train-id order with their official colours.
    public static let cityscapes19 = Palette(
        name: "Cityscapes (19 classes)",
        classes: ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                  "motorcycle", "bicycle"],
        colors: [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                 (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                 (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)])

    /// NYUD-v2's 40 classes (Gupta et al.), colours from the PASCAL colour map.
    public static let nyud40 = Palette(
        name: "NYUD-v2 (40 classes)",
        classes: ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
                  "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
                  "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
                  "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
                  "bathtub", "bag", "other structure", "other furniture", "other prop"],
        colors: (1...40).map(pascalColor))

    /// PASCAL VOC's 21 classes (background first) with the PASCAL colour map.
    public static let pascal21 = Palette(
        name: "PASCAL (21 classes)",
        classes: ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                  "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
                  "train", "tv monitor"],
        colors: (0..<21).map(pascalColor))

    /// PASCAL-Context human parts (7 classes, background first) with the PASCAL colour map.
    public static let humanParts = Palette(
        name: "PASCAL human parts",
        classes: ["background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg"],
        colors: (0..<7).map(pascalColor))

    /// `n` classes with no known names: numbered, PASCAL colour map.
    public static func numbered(_ n: Int) -> Palette {
        Palette(name: "\(n) classes", classes: (0..<n).map { "class \($0)" }, colors: (0..<n).map(pascalColor))
    }

    /// The palette for a segmentation task by its name and class count (7 for `human_parts` is the
    /// parts palette, 7 otherwise Cityscapes' categories, 19 Cityscapes, 40 NYUD, 21 PASCAL).
    public static func forTask(_ task: String, classes: Int) -> Palette {
        if task == "human_parts", classes == humanParts.classes.count { return humanParts }
        for p in [cityscapes7, cityscapes19, nyud40, pascal21] where p.classes.count == classes { return p }
        return numbered(classes)
    }

    /// The PASCAL VOC colour map: the bits of the label spread over R, G, B from the high bit down.
    static func pascalColor(_ label: Int) -> (UInt8, UInt8, UInt8) {
        var c = label, r = 0, g = 0, b = 0
        for j in 0..<8 {
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        }
        return (UInt8(r), UInt8(g), UInt8(b))
    }
}
